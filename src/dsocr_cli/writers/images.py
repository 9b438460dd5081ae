"""The outputs that cost CPU, made in a process pool: each page's images (the annotated JPEG, the
figure crops, PDF figures re-rendered at --figure-dpi and PNG-encoded, and the report's plain page
JPEG) and each document's layout.pdf and searchable.pdf (writers/pdf_files.py). They cost more CPU
than the rest of the pipeline's main process put together, and with several GPUs that process must
keep up with all of them.

The files go into the document's staging folder like every other output; the document is
committed only once all of its jobs have written theirs (`Painter.wait`).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from dsocr_cli.child_process import exit_with_parent
from dsocr_cli.render import render_region
from dsocr_cli.types import Box, PageResult
from dsocr_cli.writers.annotate import annotate
from dsocr_cli.writers.files import write_bytes


def paint_page(
    result: PageResult,
    staging: Path,
    annotated: str,
    crops: list[tuple[str, Box]],
    figure_dpi: float,
    password: str | None,
    plain: str | None = None,
) -> None:
    """Write the annotated page, each figure crop (name, box in page-image pixels) and, when `plain`
    names it, the page as the model saw it, under `staging`."""
    for name, box in crops:
        save_image(figure(result, box, figure_dpi, password), staging / name, "PNG")
    save_image(annotate(result.page.image, result.parsed.blocks), staging / annotated, "JPEG")
    if plain is not None:
        save_image(result.page.image, staging / plain, "JPEG")


def figure(result: PageResult, box: Box, figure_dpi: float, password: str | None):
    """PDF figures are re-rendered from the page at figure_dpi, sharper than the OCR input."""
    page = result.page
    if page.source.kind == "pdf" and figure_dpi > (page.dpi or 0):
        try:
            rect = tuple(v / page.scale for v in box)
            return render_region(page.source, page.index, rect, figure_dpi, password)
        except Exception:  # a page that rendered once but not twice: fall back to the OCR image
            pass
    x1, y1, x2, y2 = (round(v) for v in box)
    return page.image.crop((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)))  # at least one pixel


def save_image(image, path: Path, fmt: str) -> None:
    """Encode in memory, then write whole (JPEG at quality 85): no half-written image in the tree."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    write_bytes(path, buffer.getvalue())


class Painter:
    """Runs writing jobs (`paint_page`, the document PDFs) in worker processes, at most `ahead` jobs
    queued per process so page images never pile up in memory; `processes=0` runs them in this
    process (the same files). Pages are submitted by the main thread and document jobs by the
    threads that commit, so submitting is serialised."""

    def __init__(self, processes: int | None = None, ahead: int = 4):
        self.processes = max(1, (os.cpu_count() or 2) - 1) if processes is None else processes
        self.limit = max(1, self.processes * ahead)
        self.executor: ProcessPoolExecutor | None = None
        self.pending: deque[Future] = deque()
        self.lock = threading.Lock()

    def submit(self, job: Callable[..., None], *args) -> Future:
        """Queue one job; while too many are queued, waits for one of them to end."""
        if self.processes == 0:
            done: Future = Future()
            try:
                done.set_result(job(*args))
            except Exception as exc:
                done.set_exception(exc)
            return done
        with self.lock:
            while len(self.pending) >= self.limit:  # any job ending makes room: a long PDF holds up no page
                wait(self.pending, return_when=FIRST_COMPLETED)
                self.pending = deque(f for f in self.pending if not f.done())  # each document sees its own outcome
            with _sigint_blocked():  # the job may start a process
                future = self._executor().submit(job, *args)
            self.pending.append(future)
            return future

    def start(self) -> None:
        """Spawn the processes now (they take seconds to import), so that the first pages and the
        first commit do not wait for them."""
        if self.processes == 0:
            return
        with self.lock:
            if self.executor is not None:
                return
            executor = self._executor()
            with _sigint_blocked():
                for _ in range(self.processes):  # a process is spawned for each job no idle one can take
                    executor.submit(_ready)

    def _executor(self) -> ProcessPoolExecutor:
        if self.executor is None or getattr(self.executor, "_broken", False):  # a killed process breaks the pool
            context = multiprocessing.get_context("spawn")
            self.executor = ProcessPoolExecutor(
                self.processes, mp_context=context, initializer=_as_helper, initargs=(os.getpid(),)
            )
            self.pending.clear()
        return self.executor

    @staticmethod
    def wait(futures: list[Future]) -> None:
        """Raise the first failure among a document's pages, once all are written."""
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if isinstance(first, BrokenProcessPool):
            raise OSError("the process writing page images or PDFs died") from first
        if first is not None:
            raise first

    @staticmethod
    def cancel(futures: list[Future]) -> None:
        """Drop a document's queued pages and wait for those already being written."""
        for future in futures:
            future.cancel()
        for future in futures:
            if not future.cancelled():
                future.exception()

    def close(self) -> None:
        """Wait for the running jobs and stop the processes; jobs not yet started are cancelled."""
        with self.lock:
            if self.executor is not None:
                self.executor.shutdown(wait=True, cancel_futures=True)
                self.executor = None


def _ready() -> None:
    """The job that makes a process start."""


@contextlib.contextmanager
def _sigint_blocked():
    """Processes started meanwhile begin with SIGINT blocked, so a Ctrl-C while they import cannot
    end them (a traceback, a broken pool) before `_as_helper` ignores it."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _as_helper(parent: int) -> None:
    """A painter process ignores interrupts (the main process decides what they mean) and exits
    when the main process is gone, even one killed with -9."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    exit_with_parent(parent)
