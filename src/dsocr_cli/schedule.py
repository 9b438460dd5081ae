"""Pages -> batches. Pages are rendered in a worker process, ahead of the engine, and pages from
many documents share a batch, so a 500-page PDF and 500 single photos keep the engine equally
busy. A page that hangs or crashes the renderer costs its document, never the run.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from dsocr_cli.errors import InputError, show_path
from dsocr_cli.options import RenderOptions
from dsocr_cli.render import render
from dsocr_cli.types import PageImage, Source


@dataclass(frozen=True)
class Started:
    source: Source


@dataclass(frozen=True)
class Rendered:
    """Every page of the document has been handed out."""

    source: Source
    pages: int


@dataclass(frozen=True)
class Failed:
    source: Source
    error: InputError


Item = Started | PageImage | Rendered | Failed


RenderFn = Callable[[Source, RenderOptions], Iterable[PageImage]]


def page_stream(
    sources: Iterable[Source], options: RenderOptions, render_fn: RenderFn = render, prefetch: int = 32
) -> Iterator[Item]:
    """Each document's pages framed by Started and Rendered (or Failed, after which none follow)."""
    worker: RenderWorker | None = None
    try:
        for source in sources:
            yield Started(source)
            worker = worker or RenderWorker(options, render_fn, prefetch)
            outcome = yield from worker.document(source)
            if isinstance(outcome, Failed) and not worker.alive:
                worker = None
            yield outcome
    finally:
        if worker is not None:
            worker.stop()


class RenderWorker:
    """A spawned process that renders one document at a time into a bounded queue."""

    def __init__(self, options: RenderOptions, render_fn: RenderFn, prefetch: int):
        context = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA and threads
        self.jobs = context.Queue()
        self.pages = context.Queue(maxsize=max(2, prefetch))
        self.timeout = options.timeout
        self.process = context.Process(
            target=_render_loop, args=(self.jobs, self.pages, options, render_fn), daemon=True
        )
        self.process.start()

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def document(self, source: Source) -> Iterator[PageImage]:
        """Yield the document's pages; return its Rendered or Failed outcome."""
        self.jobs.put(source)
        count, waited = 0, 0.0
        while True:
            try:
                message = self.pages.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                if not self.alive:
                    return Failed(source, InputError(f"{show_path(source.path)}: the renderer crashed", "render-crash"))
                if waited >= self.timeout:
                    self.stop()
                    why = f"rendering stalled for over {self.timeout:.0f} s (page {count + 1})"
                    return Failed(source, InputError(f"{show_path(source.path)}: {why}", "render-timeout"))
                continue
            waited = 0.0
            kind, payload = message
            if kind == "page":
                count += 1
                yield payload
            elif kind == "done":
                return Rendered(source, count)
            else:
                text, reason, hint = payload
                return Failed(source, InputError(text, reason, hint))

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


def _render_loop(jobs, pages, options: RenderOptions, render_fn: RenderFn) -> None:
    """The worker: render each source sent, page by page; errors travel back as plain tuples."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    while (source := jobs.get()) is not None:
        try:
            for page in render_fn(source, options):
                pages.put(("page", page))
            pages.put(("done", None))
        except InputError as exc:
            pages.put(("failed", (exc.message, exc.reason, exc.hint)))
        except Exception as exc:  # a renderer bug must not look like a hang
            pages.put(("failed", (f"{show_path(source.path)}: cannot be rendered ({exc})", "corrupt", None)))


class Batcher:
    """Collects pages until a batch is full; pages of a failed document are dropped."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self.pending: list[PageImage] = []

    def add(self, page: PageImage) -> list[PageImage] | None:
        self.pending.append(page)
        return self.take() if len(self.pending) >= self.size else None

    def drop(self, source: Source) -> None:
        self.pending = [p for p in self.pending if p.source != source]

    def take(self) -> list[PageImage]:
        batch, self.pending = self.pending[: self.size], self.pending[self.size :]
        return batch
