"""The worker's side of a worker pool: one engine, fed pages on demand over one connection.

The worker asks for pages when its engine has room and sends each page's outcome back as it
ends, so the driver hands out work as workers free up and always knows which pages each one
holds. The same loop runs in a spawned process (engines/pool.py) and in a Ray actor
(engines/ray.py); only the connection differs.

    worker -> driver   ("ready", info) | ("setup-failed", error) | ("want", n, holding) | ("result", id, outcome)
                       | ("taken", ids): these pages' images are copied out of shared memory
    driver -> worker   a list of at most n jobs (id, page, prompt, strict, pixels); [] finish what you hold;
                       None stop. `pixels` names the page's image in shared memory (engines/pixels.py),
                       where the page came without it; None where the image came with the page.

How many pages a request asks for (`n`): a streaming engine with a paged decoder asks for as many
as fill its lanes, plus PREFETCH waiting, less the pages it holds (`holding`: every page sent to it
and not yet answered, admitted into a lane or not), at most MAX_ASK; so a decoder with 200 free
lanes fills them in one round trip, and a worker never holds more than its lanes plus PREFETCH
(plus what its engine's input threads read ahead). Other streaming engines ask for PREFETCH, and
engines that batch for one batch. The driver may answer with fewer pages (what is ready now, and
only a fair share once the input is exhausted), never with more. A streaming engine's requests
go out from a thread of their own (`Fetcher`), as soon as the engine has taken the last page it
was given, so the thread that drives the GPU does not wait out the round trip to the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import queue
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator

from dsocr_cli.child_process import exit_with_parent
from dsocr_cli.errors import DsocrError, ExitCode
from dsocr_cli.handover import read

PREFETCH = 2  # pages a streaming worker holds beyond its free lanes: one to admit next, one waiting
MAX_ASK = 256  # the most pages one request asks for


def build_engine(factory: str | Callable, options):
    """Load the engine in this worker, from the same registered factory the driver would use."""
    import importlib

    if isinstance(factory, str):
        module, _, func = factory.partition(":")
        factory = getattr(importlib.import_module(module), func)
    return factory(options)


def worker_info(engine, slot: int) -> dict:
    """What the driver shows about this worker: device, host, process."""
    device = getattr(engine, "device", "cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    label = f"{device}:{visible}" if device == "cuda" and visible else device
    info = {"worker": slot, "device": label, "host": socket.gethostname(), "pid": os.getpid()}
    info["retries_inside"] = bool(getattr(engine, "retries_inside", False) and hasattr(engine, "stream"))
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    return info


def setup_failure(exc: BaseException) -> tuple:
    """A load error as plain values, so the driver can raise the same kind of error."""
    if isinstance(exc, DsocrError):
        return type(exc).__name__, exc.message, exc.hint, int(exc.exit_code)
    return type(exc).__name__, f"{type(exc).__name__}: {exc}", None, int(ExitCode.INTERNAL)


def ask_size(engine, holding: int) -> int:
    """Pages a streaming engine can take soon: its decoder's lanes plus PREFETCH, less the pages it
    holds, at least one (the engine is waiting for it); PREFETCH where no decoder shows its lanes."""
    decoder = getattr(engine, "decoder", None)
    lanes = getattr(getattr(decoder, "config", None), "lanes", None)
    if not isinstance(lanes, int) or lanes < 1:
        return PREFETCH
    return max(1, min(MAX_ASK, lanes + PREFETCH - holding))


def serve(engine, conn) -> None:
    """Ask for pages, run them, send each outcome back; until the driver says stop."""
    streams = getattr(engine, "continuous", False) and hasattr(engine, "stream")
    conn = Link(conn)
    while True:
        conn.send(("want", ask_size(engine, 0) if streams else max(1, getattr(engine, "batch_size", 1)), 0))
        jobs = receive(conn)
        if jobs is None:
            return
        if not jobs:
            continue
        if streams:
            if _stream(engine, conn, jobs):
                return
        else:
            _batches(engine, conn, jobs)


def receive(conn) -> list | None:
    """The driver's next answer, each page with its image: those that came through shared memory
    are copied out of it, and the driver is told, so it can reuse their segments."""
    jobs = conn.recv()
    if not jobs:
        return jobs
    taken = [job[0] for job in jobs if job[4] is not None]
    jobs = [
        (i, page if pixels is None else dataclasses.replace(page, image=read(pixels)), prompt, strict)
        for i, page, prompt, strict, pixels in jobs
    ]
    if taken:
        conn.send(("taken", taken))
    return jobs


class Link:
    """The connection to the driver, sent on from two threads (the engine's and the Fetcher's):
    a message is written whole before the next begins."""

    def __init__(self, conn):
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message) -> None:
        """One message to the driver, whole."""
        with self.lock:
            self.conn.send(message)

    def recv(self):
        """The driver's next message (one thread at a time reads: the Fetcher while a stream runs)."""
        return self.conn.recv()


class Fetcher:
    """Pages from the driver for a streaming engine, asked for on a thread of its own: the request
    goes out as soon as the engine has taken the last page it was given, and the engine waits
    only when it wants a page before the answer is back. Runs until the driver answers [] or None."""

    def __init__(self, conn: Link, jobs: list):
        self.conn = conn
        self.waiting = deque(jobs)
        self.asks: queue.Queue = queue.Queue()  # (n, holding) requests for the thread to send
        self.answers: queue.Queue = queue.Queue()  # the driver's answers, in order
        self.asked = False  # a request is out and its answer not yet taken
        self.stopped = False  # the driver said stop
        threading.Thread(target=self._run, name="dsocr-fetch", daemon=True).start()

    def ask(self, count: int, holding: int) -> None:
        """Ask for `count` more pages now, unless pages still wait or a request is already out."""
        if not self.waiting and not self.asked:
            self.asked = True
            self.asks.put((count, holding))

    def next(self) -> tuple | None:
        """The next job, waiting for the driver's answer if need be; None when the driver has
        nothing more for now, or said stop (`stopped`)."""
        if not self.waiting:
            more = self.answers.get()
            self.asked = False
            if isinstance(more, BaseException):  # the thread failed: the engine's thread ends the worker
                raise more
            if not more:
                self.stopped = more is None
                return None
            self.waiting.extend(more)
        return self.waiting.popleft()

    def _run(self) -> None:
        try:
            while True:
                count, holding = self.asks.get()
                self.conn.send(("want", count, holding))
                more = receive(self.conn)
                self.answers.put(more)
                if not more:  # None (stop) or [] (nothing more now): the stream ends, so does this thread
                    return
        except BaseException as exc:  # the driver gone, or a page that cannot be taken: never a silent hang
            self.answers.put(exc)


def _stream(engine, conn: Link, jobs: list) -> bool:
    """Feed the engine's continuous stream from the driver until the driver has nothing more for
    now; True when the driver said stop. The engine reads its pages to the end (the driver's [] or
    None), so no request of the Fetcher is left unanswered when this returns."""
    fetcher = Fetcher(conn, jobs)
    held: dict[object, tuple] = {}  # page -> job, for pages inside the engine (an engine may hand back
    # a copy of a page, without its bulky inputs: pages are compared by document and index)

    def incoming() -> Iterator:
        """Pages for the engine; more are asked for as soon as the last one given is taken."""
        while True:
            fetcher.ask(ask_size(engine, len(held)), len(held))
            job = fetcher.next()
            if job is None:  # let the engine finish what it holds
                return
            if job[3]:  # a strict retry goes through predict, right away
                _send(conn, job[0], _predict_one(engine, job))
                continue
            held[job[1]] = job
            fetcher.ask(ask_size(engine, len(held)), len(held))
            yield job[1]

    first = jobs[0]
    for page, outcome in engine.stream(incoming(), first[2]):
        job = held.pop(page)
        _send(conn, job[0], outcome)
    return fetcher.stopped


def _batches(engine, conn, jobs: list) -> None:
    """An engine without a stream: its pages through predict, grouped by prompt and strictness."""
    groups: dict[tuple, list] = {}
    for job in jobs:
        groups.setdefault((job[2], job[3]), []).append(job)
    for (prompt, strict), group in groups.items():
        for job, outcome in _predict(engine, group, prompt, strict):
            _send(conn, job[0], outcome)


def _predict(engine, jobs: list, prompt: str, strict: bool) -> list:
    """Predict a batch; when it fails, split it, so that only a page failing alone is lost."""
    try:
        return list(zip(jobs, engine.predict([j[1] for j in jobs], prompt, strict=strict), strict=True))
    except Exception as exc:
        if len(jobs) == 1:
            return [(jobs[0], exc)]
        half = len(jobs) // 2
        return _predict(engine, jobs[:half], prompt, strict) + _predict(engine, jobs[half:], prompt, strict)


def _predict_one(engine, job: tuple):
    return _predict(engine, [job], job[2], job[3])[0][1]


def _send(conn, job_id: int, outcome) -> None:
    """An outcome back to the driver; an exception that cannot travel goes as a RuntimeError."""
    if isinstance(outcome, BaseException):
        try:
            pickle.loads(pickle.dumps(outcome))
        except Exception:
            outcome = RuntimeError(f"{type(outcome).__name__}: {outcome}")
    conn.send(("result", job_id, outcome))


def process_main(slot: int, factory, options, conn, environment: dict, parent: int) -> None:
    """A spawned worker process: pin the device, load the engine, serve until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides what an interrupt means
    os.environ.update(environment)
    exit_with_parent(parent)
    with contextlib.suppress(EOFError, OSError):  # the driver is gone
        load_and_serve(slot, factory, options, conn)


def load_and_serve(slot: int, factory, options, conn) -> bool:
    """Load the engine, tell the driver whether it is ready, then serve; False when it failed to load.
    The one start-up of a worker, whether a spawned process or a Ray actor."""
    try:
        engine = build_engine(factory, options)
    except BaseException as exc:
        conn.send(("setup-failed", setup_failure(exc)))
        return False
    conn.send(("ready", worker_info(engine, slot)))
    serve(engine, conn)
    return True
