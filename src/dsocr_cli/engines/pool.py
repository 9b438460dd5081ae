"""Every GPU of a host: `--workers N` spawned processes, one engine each, fed from one queue.

The pool is an engine like any other (`stream` and `predict`), so discovery, rendering, resume,
the output lock and every write stay in the one process that owns OUT. Workers ask for pages as
their engine frees up (engines/worker.py), never in static chunks, so a long document on one GPU
leaves no other idle.

Faults: a worker that dies costs only the pages it held. Each goes to another worker once, and
alone, so a page that kills that second worker too is known to be the cause: it fails with
reason `worker` (its document fails, the run goes on). A dead worker is started again, at most
MAX_RESTARTS times. Ray actors (engines/ray.py) plug into the same driver through a launcher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Protocol

from dsocr_cli.engines.pixels import Pixels, SharedPixels
from dsocr_cli.engines.worker import process_main
from dsocr_cli.errors import DsocrError, ExitCode, show_path
from dsocr_cli.options import EngineOptions
from dsocr_cli.types import PageImage, Prediction

log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # per worker; a worker that cannot even load again is retired at once
GATHER_SECONDS = 0.05  # how long one answer waits for more rendered pages once it has one


class WorkerLost(DsocrError):
    """A page that was inside two workers when each of them died: it fails its document."""

    exit_code = ExitCode.FAILED_INPUTS
    reason = "worker"


class WorkersGone(DsocrError):
    """Every worker died or could not start again: nothing is left to run the pages."""

    exit_code = ExitCode.INTERNAL


class Launcher(Protocol):
    """Starts one worker for a slot and returns the driver's end of its connection and a handle."""

    def launch(self, slot: int) -> tuple[Connection, object]:
        """Start worker `slot`; returns the driver's end of its connection and a handle for `stop`."""
        ...

    def stop(self, handle: object, grace: float) -> None:
        """Let the worker exit within `grace` seconds, then end it."""
        ...


@dataclass(eq=False)
class Job:
    """One page handed to the pool, followed until its outcome comes back (from whichever worker)."""

    id: int
    page: PageImage
    prompt: str
    strict: bool
    urgent: bool  # asked for through predict: its outcome is awaited there, not streamed
    deaths: int = 0  # workers that died while holding it
    pixels: Pixels | None = None  # its image in shared memory, until the worker has taken it

    def message(self) -> tuple:
        """What travels to the worker: plain values only; the image stays here when its pixels
        travel through shared memory."""
        page = self.page if self.pixels is None else dataclasses.replace(self.page, image=None)
        return (self.id, page, self.prompt, self.strict, self.pixels)


@dataclass(eq=False)
class Worker:
    """The driver's view of one worker: its connection, what it holds and what it asked for."""

    slot: int
    conn: Connection | None = None
    handle: object = None
    info: dict = field(default_factory=dict)
    held: dict[int, Job] = field(default_factory=dict)  # sent and not yet answered
    want: int = 0  # pages asked for and not yet given
    holding: int = 0  # pages inside its engine when it asked
    suspect: bool = False  # it runs a page from a dead worker, alone
    ready: bool = False
    retired: bool = False
    restarts: int = 0
    pages: int = 0
    tokens: int = 0
    since: float = 0.0

    def record(self) -> dict:
        """The worker as the progress display and summary.json show it."""
        seconds = time.perf_counter() - self.since if self.since else 0.0
        state = "retired" if self.retired else "running" if self.ready else "starting"
        info = {k: v for k, v in self.info.items() if k != "retries_inside"}
        return dict(
            info,
            worker=self.slot,
            state=state,
            pages=self.pages,
            tokens=self.tokens,
            tokens_per_second=round(self.tokens / seconds, 2) if seconds > 0 else 0.0,
            restarts=self.restarts,
        )


class WorkerPool:
    """The driver: hands pages to workers as they ask, collects outcomes, replaces dead workers."""

    continuous = True
    batch_size = 16  # what the pipeline's fallback path batches by; workers batch on their own

    def __init__(self, launcher: Launcher, count: int, name: str, events=None, pixels: SharedPixels | None = None):
        self.launcher = launcher
        self.pixels = pixels  # workers on this host take page images from shared memory
        self.name = name
        self.events = events
        self.workers = [Worker(slot) for slot in range(count)]
        self.device = "cpu"
        self.retries_inside = False  # True when the workers' engines retry looping pages themselves
        self.ids = 0
        self.source: Iterator[PageImage] | None = None
        self.prompt = ""
        self.pulling = True  # False while predict waits: the page source is not re-entered
        self.urgent: deque[Job] = deque()
        self.suspects: deque[Job] = deque()
        self.spare: deque[Job] = deque()  # pages taken from the source and not yet handed out
        self.out: deque[tuple[PageImage, Prediction | Exception]] = deque()
        self.answers: dict[int, Prediction | Exception] = {}
        self.shown = 0.0

    # --- the engine contract -------------------------------------------------------------------

    def start(self) -> WorkerPool:
        """Start every worker at once and wait until each has loaded its engine."""
        failure = None
        try:
            for worker in self.workers:
                self._launch(worker)
            while failure is None and not all(w.ready for w in self.workers):
                failure = self._pump(starting=True)
        except BaseException:  # an interrupt while the models load
            self.close(grace=0.0)
            raise
        if failure is not None:
            self.close()
            raise failure
        self.device = self.workers[0].info.get("device", "cpu").split(":")[0]
        self.retries_inside = all(w.info.get("retries_inside") for w in self.workers)
        log.info("%d workers: %s", len(self.workers), ", ".join(f"{w.slot} {_label(w.info)}" for w in self.workers))
        self._show(force=True)
        return self

    def stream(self, pages: Iterable[PageImage], prompt: str) -> Iterator[tuple[PageImage, Prediction | Exception]]:
        """Yield (page, Prediction or exception) as pages finish, on whichever worker."""
        self.source, self.prompt = iter(pages), prompt
        try:
            while True:
                while self.out:
                    yield self.out.popleft()
                if self.source is None and not (self.suspects or self.spare or any(w.held for w in self.workers)):
                    return
                self._serve_waiting()
                self._pump()
        finally:
            self.source = None
            self.spare.clear()

    def predict(self, pages: list[PageImage], prompt: str, strict: bool = False) -> list[Prediction]:
        """Pages through the workers, waited for (the pipeline's strict retries and fallback)."""
        jobs = [self._job(page, prompt, strict, urgent=True) for page in pages]
        self.urgent.extend(jobs)
        pulling, self.pulling = self.pulling, False
        try:
            while any(job.id not in self.answers for job in jobs):
                self._serve_waiting()
                self._pump()
        finally:
            self.pulling = pulling
        outcomes = [self.answers.pop(job.id) for job in jobs]
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes

    def stats(self) -> dict:
        """The summary's `engine` entry: the engine and each worker."""
        return {"engine": self.name, "device": self.device, "workers": [w.record() for w in self.workers]}

    def close(self, grace: float = 3.0) -> None:
        """Tell every worker to stop; kill any that has not within `grace` seconds."""
        for worker in self.workers:
            if worker.conn is not None:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
        deadline = time.monotonic() + grace
        for worker in self.workers:
            if worker.handle is not None:
                self.launcher.stop(worker.handle, max(0.0, deadline - time.monotonic()))
                worker.handle = None
            if worker.conn is not None:
                worker.conn.close()
                worker.conn = None
        if self.pixels is not None:
            self.pixels.close()
            log.debug("page images: %d through shared memory, %d whole", self.pixels.shared, self.pixels.whole)

    # --- the driver ----------------------------------------------------------------------------

    def _job(self, page: PageImage, prompt: str, strict: bool, urgent: bool) -> Job:
        self.ids += 1
        return Job(self.ids, page, prompt, strict, urgent)

    def _launch(self, worker: Worker) -> None:
        worker.conn, worker.handle = self.launcher.launch(worker.slot)
        worker.ready, worker.want, worker.holding, worker.suspect = False, 0, 0, False

    def _pump(self, starting: bool = False, timeout: float = 1.0) -> DsocrError | None:
        """Handle what the workers sent; a closed connection is a dead worker."""
        live = {w.conn: w for w in self.workers if w.conn is not None}
        if not live:
            raise WorkersGone("every worker died or could not start again", "see the errors above")
        for conn in wait(list(live), timeout):
            worker = live[conn]
            if worker.conn is not conn:  # lost and started again while handling an earlier message
                continue
            try:
                message = conn.recv()
            except (EOFError, OSError):
                if starting:
                    return DsocrError(f"worker {worker.slot} exited while loading the engine", "rerun with --verbose")
                self._lost(worker)
                continue
            failure = self._on_message(worker, message, starting)
            if failure is not None:
                return failure
        return None

    def _on_message(self, worker: Worker, message: tuple, starting: bool) -> DsocrError | None:
        kind = message[0]
        if kind == "want":
            worker.want, worker.holding = message[1], message[2]
            log.debug("worker %d asks for %d page(s), holding %d", worker.slot, worker.want, worker.holding)
            self._serve(worker)
        elif kind == "taken":
            for job_id in message[1]:
                self._give_back(worker.held.get(job_id))
        elif kind == "result":
            self._result(worker, message[1], message[2])
        elif kind == "ready":
            worker.info, worker.ready, worker.since = message[1], True, worker.since or time.perf_counter()
            self._show(force=True)
        elif kind == "setup-failed":
            error = _setup_error(message[1])
            if starting:
                return error
            log.error("worker %d could not start again: %s; going on without it", worker.slot, error.one_line())
            self._retire(worker)
        return None

    def _result(self, worker: Worker, job_id: int, outcome) -> None:
        job = worker.held.pop(job_id)
        self._give_back(job)
        worker.suspect = worker.suspect and bool(worker.held)
        if isinstance(outcome, Prediction):
            worker.pages += 1
            worker.tokens += outcome.tokens
        self._deliver(job, outcome)
        self._show()

    def _deliver(self, job: Job, outcome) -> None:
        if job.urgent:
            self.answers[job.id] = outcome
        else:
            self.out.append((job.page, outcome))

    def _serve_waiting(self) -> None:
        for worker in self.workers:
            if worker.want and worker.conn is not None:
                self._serve(worker)

    def _serve(self, worker: Worker) -> None:
        """Answer a worker's request: pages, or [] to a worker that should finish what it holds.
        A request from an idle worker with nothing to give waits for work to appear."""
        jobs = self._jobs_for(worker)
        if not jobs and worker.holding == 0:
            return
        for job in jobs:
            worker.held[job.id] = job
            self._lend(job)
        worker.want = 0
        try:
            worker.conn.send([job.message() for job in jobs])
        except OSError:
            self._lost(worker)

    def _lend(self, job: Job) -> None:
        """Put the page's image in shared memory for a worker on this host (where there is room)."""
        if self.pixels is not None and job.pixels is None:
            job.pixels = self.pixels.lend(job.page.image)

    def _give_back(self, job: Job | None) -> None:
        """The worker holding the job has copied its image out, or is gone: its segment is free."""
        if job is not None and job.pixels is not None:
            self.pixels.give_back(job.pixels)
            job.pixels = None

    def _jobs_for(self, worker: Worker) -> list[Job]:
        """Strict retries first; then pages from dead workers, one at a time to an empty worker
        (while any wait, workers drain); then new pages."""
        if worker.suspect:
            return []
        if self.urgent:
            return [self.urgent.popleft() for _ in range(min(worker.want, len(self.urgent)))]
        if self.suspects:
            if worker.held or worker.holding:
                return []
            worker.suspect = True
            return [self.suspects.popleft()]
        return self._pull(worker.want)

    def _pull(self, count: int) -> list[Job]:
        """Up to `count` new pages: the first may wait for rendering, more only while they come
        within GATHER_SECONDS of it (the worker waits for this answer). Once the source is
        exhausted, each answer takes at most a fair share of what is left, so the last pages
        spread over the workers instead of queueing in the one that asked first."""
        deadline = math.inf
        while len(self.spare) < count and self.source is not None and self.pulling and time.monotonic() < deadline:
            page = next(self.source, None)
            if page is None:
                self.source = None
                break
            self.spare.append(self._job(page, self.prompt, False, urgent=False))
            deadline = min(deadline, time.monotonic() + GATHER_SECONDS)
        if self.source is None:
            count = min(count, -(-len(self.spare) // max(1, sum(w.ready for w in self.workers))))
        return [self.spare.popleft() for _ in range(min(count, len(self.spare)))]

    def _lost(self, worker: Worker) -> None:
        """A worker died: its pages go to another worker once, alone; a second death fails them."""
        held = list(worker.held.values())
        worker.held.clear()
        self._drop(worker)
        for job in held:
            self._give_back(job)
            job.deaths += 1
            if job.deaths >= 2:
                where = f"{show_path(job.page.source.path)}: page {job.page.number}"
                self._deliver(job, WorkerLost(f"{where}: it stopped the two workers that ran it"))
            else:
                self.suspects.append(job)
        if worker.restarts >= MAX_RESTARTS:
            log.error("worker %d died %d times; going on without it", worker.slot, worker.restarts + 1)
            self._retire(worker)
            return
        worker.restarts += 1
        log.warning(
            "worker %d (%s) died with %d page(s) in it; starting it again", worker.slot, _label(worker.info), len(held)
        )
        self._launch(worker)
        self._show(force=True)

    def _drop(self, worker: Worker) -> None:
        if worker.conn is not None:
            worker.conn.close()
            worker.conn = None
        if worker.handle is not None:
            self.launcher.stop(worker.handle, 0.0)
            worker.handle = None
        worker.ready = False

    def _retire(self, worker: Worker) -> None:
        self._drop(worker)
        worker.retired = True
        self._show(force=True)

    def _show(self, force: bool = False) -> None:
        """Tell the progress display about the workers, at most twice a second."""
        now = time.perf_counter()
        if self.events is not None and (force or now - self.shown >= 0.5):
            self.shown = now
            self.events.workers_changed([w.record() for w in self.workers])


def _label(info: dict) -> str:
    """Where a worker runs, for log lines: `cuda:3@host pid 1234`."""
    return f"{info.get('device', '?')}@{info.get('host', '?')} pid {info.get('pid', '?')}" if info else "not started"


def _setup_error(payload: tuple) -> DsocrError:
    """A worker's load error raised here with the same message and exit code."""
    _, message, hint, code = payload
    error = DsocrError(message, hint)
    error.exit_code = ExitCode(code)
    return error


class ProcessLauncher:
    """Workers as spawned processes on this host, one device each."""

    def __init__(self, factory, options: EngineOptions, count: int):
        self.context = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA and threads
        self.factory = factory
        self.options = options
        self.count = count
        self.gpus = _visible_gpus(options)

    def launch(self, slot: int) -> tuple[Connection, object]:
        """A spawned process (no fork of a process holding CUDA) pinned to its GPU."""
        driver_end, worker_end = self.context.Pipe()
        process = self.context.Process(
            target=process_main,
            args=(slot, self.factory, self.options, worker_end, self._environment(slot), os.getpid()),
            name=f"dsocr-worker-{slot}",
            daemon=True,
        )
        process.start()
        worker_end.close()  # the worker holds the only other end: its death closes the connection
        return driver_end, process

    def _environment(self, slot: int) -> dict:
        """One GPU per worker, in CUDA_VISIBLE_DEVICES order; CPU workers share the cores."""
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": self.gpus[slot % len(self.gpus)]}
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // self.count))
        return {"OMP_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": ""}

    def stop(self, handle, grace: float) -> None:
        """Wait `grace` seconds for the process to exit after the stop message, then kill it."""
        handle.join(grace)
        if handle.is_alive():
            handle.kill()
            handle.join(5)


def _visible_gpus(options: EngineOptions) -> list[str]:
    """The GPUs workers may use: CUDA_VISIBLE_DEVICES as the user set it, else every GPU."""
    if options.device not in ("auto", "cuda"):
        return []
    import torch

    count = torch.cuda.device_count()
    if not count:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(count)]
    return names[:count]


def worker_count(options: EngineOptions) -> int:
    """`--workers N`, or auto: one per visible GPU, one where there is none."""
    if options.workers:
        return options.workers
    return max(1, len(_visible_gpus(options)))


def start_pool(factory, options: EngineOptions, count: int, events=None) -> WorkerPool:
    """Spawn `count` workers running the engine `factory` builds and wait until all are loaded."""
    launcher = ProcessLauncher(factory, options, count)
    return WorkerPool(launcher, count, options.engine, events, pixels=SharedPixels()).start()
