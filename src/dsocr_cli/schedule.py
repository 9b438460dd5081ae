"""Pages -> batches. Pages are rendered, and prepared for the model when the engine asks, in a pool
of worker processes ahead of the engine, several documents at once; pages from many documents share
a batch, so a 500-page PDF and 500 single photos keep the engine equally busy. A page that hangs or
crashes its renderer costs its document, never the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler

from dsocr_cli import handover
from dsocr_cli.errors import InputError, show_path
from dsocr_cli.options import RenderOptions
from dsocr_cli.render import render
from dsocr_cli.types import PageImage, Source


@dataclass(frozen=True)
class Started:
    """A document is about to render: the consumer opens its output (and fingerprints the input) first."""

    source: Source


@dataclass(frozen=True)
class Rendered:
    """Every page of the document has been handed out."""

    source: Source
    pages: int


@dataclass(frozen=True)
class Failed:
    """A document could not be rendered (or its renderer died); no more of its pages follow."""

    source: Source
    error: InputError


Item = Started | PageImage | Rendered | Failed


RenderFn = Callable[[Source, RenderOptions], Iterable[PageImage]]
Prepare = Callable[[PageImage], PageImage]


def page_stream(
    sources: Iterable[Source],
    options: RenderOptions,
    render_fn: RenderFn = render,
    prefetch: int = 32,
    prepare: Prepare | None = None,
    workers: int | None = None,
) -> Iterator[Item]:
    """Each document's pages, in page order, framed by Started and Rendered (or Failed, after which
    none follow). Documents render side by side, one per worker, so items of different documents
    interleave; Started comes in the order of `sources`, before that document's rendering begins.
    `prepare` runs in the worker on every page (the engine's preprocessing); about `prefetch` pages
    wait ready in all."""
    pool = RenderPool(options, render_fn, prepare, workers or default_workers(), prefetch)
    try:
        yield from pool.stream(iter(sources))
    finally:
        pool.close()


def default_workers() -> int:
    """One core stays with the main process, which feeds the engine; more than 8 renderers rarely pay."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores - 1, 8))


class RenderPool:
    """Up to `size` workers, each on one document at a time; a worker that dies is replaced when
    the next document needs one."""

    def __init__(self, options: RenderOptions, render_fn: RenderFn, prepare: Prepare | None, size: int, prefetch: int):
        self.size = max(1, size)
        self.start = (options, render_fn, prepare, max(1, prefetch // self.size))
        self.workers: list[RenderWorker] = []

    def stream(self, sources: Iterator[Source]) -> Iterator[Item]:
        """Items of every document as workers produce them; a worker's death reads as its document's Failed."""
        while True:
            yield from self._dispatch(sources)
            busy = {w.conn: w for w in self.workers if w.source is not None}
            if not busy:
                return
            for conn in multiprocessing.connection.wait(list(busy)):  # a worker's death reads as EOF
                yield busy[conn].receive()

    def _dispatch(self, sources: Iterator[Source]) -> Iterator[Started]:
        """Each idle worker, spawned as needed up to `size`, gets the next document. Started is
        yielded first, so the consumer acts on it (takes the input's fingerprint) before rendering."""
        while len(self.workers) < self.size or any(w.source is None for w in self.workers):
            source = next(sources, None)
            if source is None:
                return
            yield Started(source)
            self._idle().begin(source)

    def _idle(self) -> RenderWorker:
        # A dead worker goes once its document has its outcome (one that died on a document keeps
        # it until its loss is read, after the pages it sent before dying).
        self.workers = [w for w in self.workers if w.source is not None or w.alive]
        idle = next((w for w in self.workers if w.source is None), None)
        if idle is None:
            idle = RenderWorker(*self.start)
            self.workers.append(idle)
        return idle

    def close(self) -> None:
        """End every worker, busy or not: the run is over or interrupted."""
        for worker in self.workers:
            worker.kill()
        for worker in self.workers:
            worker.join()
        self.workers.clear()


class RenderWorker:
    """A spawned process that renders (and prepares) the documents sent to it, one at a time, up to
    `ahead` pages ahead of the parent. A page that takes longer than the timeout ends the process
    (SIGALRM), which the parent reports as a stall; any other death as a crash."""

    def __init__(self, options: RenderOptions, render_fn: RenderFn, prepare: Prepare | None, ahead: int):
        context = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA and threads
        self.conn, child = context.Pipe()
        # Pages sent and not yet read here: the pipe alone bounds that only for pages too big for it
        self.unread = context.Semaphore(ahead)
        # Names its shared page images: process ids repeat across containers sharing /dev/shm
        self.token = secrets.token_hex(6)
        args = (child, options, render_fn, prepare, self.unread, self.token)
        self.process = context.Process(target=_serve, args=args, daemon=True)
        # Started with SIGINT blocked (it inherits that), so a Ctrl-C during its start-up cannot
        # reach it before it ignores SIGINT itself.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()  # the parent keeps no copy of the worker's end: the worker's death reads as EOF
        self.timeout = options.timeout
        self.source: Source | None = None
        self.pages = 0

    @property
    def alive(self) -> bool:
        """Whether the process still runs (a dead idle worker is dropped, not reused)."""
        return self.process.is_alive()

    def begin(self, source: Source) -> None:
        """Hand the worker its next document; a worker that just died is found by `receive`."""
        self.source, self.pages = source, 0
        with contextlib.suppress(OSError):  # it died this instant: receive() reads the EOF and reports the loss
            self.conn.send(source)

    def receive(self) -> Item:
        """The current document's next page, or its outcome: done, failed, or lost with the worker."""
        source = self.source
        try:
            kind, payload = pickle.loads(self.conn.recv_bytes())
        except Exception as exc:  # EOF: the worker died; or a page that cannot be rebuilt here
            return self._lost(source, exc)
        if kind == "shared-page":
            page, pixels = payload
            try:
                kind, payload = "page", dataclasses.replace(page, image=handover.take(pixels))
            except Exception as exc:  # its segment is gone (/dev/shm emptied under us)
                return self._lost(source, exc)
        if kind == "page":
            self.unread.release()
            self.pages += 1
            return payload
        self.source = None
        if kind == "done":
            return Rendered(source, self.pages)
        return Failed(source, InputError(*payload))

    def _lost(self, source: Source, exc: Exception) -> Failed:
        self.source = None
        self.process.join(timeout=1)  # after an EOF it is on its way out
        crashed = not self.alive
        self.kill()  # alive: its page cannot be rebuilt here, and its state is unknown
        self.join()
        name = show_path(source.path)
        if self.process.exitcode == -signal.SIGALRM:
            why = f"rendering stalled for over {self.timeout:.0f} s (page {self.pages + 1})"
            return Failed(source, InputError(f"{name}: {why}", "render-timeout"))
        if crashed:
            return Failed(source, InputError(f"{name}: the renderer crashed", "render-crash"))
        why = f"page {self.pages + 1} could not be received from the renderer ({_first_line(exc)})"
        return Failed(source, InputError(f"{name}: {why}", "render-crash"))

    def kill(self) -> None:
        """End the process at once (SIGKILL): its state is unknown or no longer wanted."""
        if self.process.is_alive():
            self.process.kill()

    def join(self) -> None:
        """Reap the process, close the parent's end of the pipe and unlink the page images it
        shared that were never read."""
        self.process.join(timeout=5)
        self.conn.close()
        if self.process.pid is not None and not self.alive:
            handover.sweep(self.token)


def _serve(conn, options: RenderOptions, render_fn: RenderFn, prepare: Prepare | None, unread, token: str) -> None:
    """The worker: each source received becomes messages for the parent, sent by a second thread
    so rendering goes on while the parent is busy, until the pages the parent has not read yet
    fill `unread` (a semaphore it releases per page read). The parent's end closing ends the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt means
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    outbox: queue.Queue = queue.Queue()
    threading.Thread(target=_send_all, args=(conn, outbox), daemon=True).start()
    parent = os.getppid()
    while True:
        try:
            source = conn.recv()
        except (EOFError, OSError):
            return
        messages = _messages(source, options, render_fn, prepare)
        while True:
            signal.setitimer(signal.ITIMER_REAL, options.timeout)  # SIGALRM's default action ends a stalled page
            message = next(messages, None)
            signal.setitimer(signal.ITIMER_REAL, 0)
            if message is None:
                break
            if message[0] != "page":
                outbox.put(_dumps(message))
                continue
            _wait_for_room(unread, parent)  # outside the stall timer: a parent busy elsewhere is no stall
            try:
                outbox.put(_pack(message[1], token))
            except Exception as exc:  # the page cannot be sent: its document fails, the worker goes on
                unread.release()
                messages.close()
                why = f"{show_path(source.path)}: page {message[1].number} cannot be handed over ({_first_line(exc)})"
                outbox.put(_dumps(("failed", (why, "corrupt", None))))
                break


def _wait_for_room(unread, parent: int) -> None:
    """Wait until the parent has read enough pages. A parent that died reads none, and with
    nothing left to send the worker would never learn of it through the pipe: it ends here."""
    while not unread.acquire(timeout=1.0):
        if os.getppid() != parent:
            os._exit(0)


def _send_all(conn, outbox: queue.Queue) -> None:
    try:
        while True:
            conn.send_bytes(outbox.get())
    except OSError:  # the parent is gone: nobody wants these pages
        os._exit(0)


def _messages(source: Source, options: RenderOptions, render_fn: RenderFn, prepare: Prepare | None) -> Iterator:
    """One document as messages: each page, prepared when asked, then done; or failed, after
    which none follow. Errors travel as plain tuples."""
    try:
        for page in render_fn(source, options):
            yield "page", _prepared(page, prepare)
        yield "done", None
    except InputError as exc:
        yield "failed", (exc.message, exc.reason, exc.hint)
    except Exception as exc:  # a renderer bug must not look like a hang
        why = f"{show_path(source.path)}: cannot be rendered ({_first_line(exc)})"
        yield "failed", (why, "corrupt", None)


def _prepared(page: PageImage, prepare: Prepare | None) -> PageImage:
    try:
        return prepare(page) if prepare else page
    except Exception as exc:
        where = f"{show_path(page.source.path)}: page {page.number}"
        raise InputError(f"{where} cannot be prepared for the model ({_first_line(exc)})", "prepare") from None


def _pack(page: PageImage, token: str):
    """A page pickled for the parent; its image goes through shared memory where there is room for
    it (see handover), its tensors as `_dumps` says."""
    pixels = handover.share(page.image, token)
    if pixels is None:
        return _dumps(("page", page), page.inputs)
    try:
        return _dumps(("shared-page", (dataclasses.replace(page, image=None), pixels)), page.inputs)
    except Exception:
        handover.discard(pixels)  # nobody will read it
        raise


def _dumps(message: tuple, tensors: dict | None = None):
    """Pickled for the parent. A page's tensors (`tensors`, in the message) travel through shared
    memory (torch's reductions) while /dev/shm has room for them twice over, and are copied through
    the pipe otherwise: with a small /dev/shm (Docker's 64 MB) torch would fail part way and leave
    empty segments behind."""
    torch = sys.modules.get("torch")
    size = sum(getattr(value, "nbytes", 0) for value in (tensors or {}).values())
    if torch is not None and size and handover.free_bytes() >= 2 * size:
        # Named segments: the parent opens them itself. With the default (file descriptors) it would
        # have to fetch each one from this worker, and wait whenever rendering holds the GIL here.
        torch.multiprocessing.set_sharing_strategy("file_system")
        with contextlib.suppress(RuntimeError):  # "unable to allocate shared memory": others took the room
            return ForkingPickler.dumps(message)
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Batcher:
    """Collects pages until a batch is full; pages of a failed document are dropped."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self.pending: list[PageImage] = []

    def add(self, page: PageImage) -> list[PageImage] | None:
        """Add a page; returns a full batch when there is one."""
        self.pending.append(page)
        return self.take() if len(self.pending) >= self.size else None

    def drop(self, source: Source) -> None:
        """Forget the waiting pages of a document that failed: they would be predicted for nothing."""
        self.pending = [p for p in self.pending if p.source != source]

    def take(self) -> list[PageImage]:
        """The next batch, full or not (the end of the input)."""
        batch, self.pending = self.pending[: self.size], self.pending[self.size :]
        return batch
