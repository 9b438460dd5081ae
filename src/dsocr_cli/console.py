"""What the user sees on stderr: a rich progress bar on a terminal, plain log lines otherwise,
errors only with --quiet. The one module that imports rich.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dsocr_cli.discover import Rejected
from dsocr_cli.errors import show_path
from dsocr_cli.types import DocumentResult, PageImage, Source

log = logging.getLogger("dsocr")


@dataclass
class Environment:
    """The process's streams: `data` is the real stdout, kept for markdown and JSON alone."""

    data: TextIO
    err: TextIO
    stdin: TextIO
    err_is_tty: bool

    @classmethod
    def isolate_stdout(cls) -> Environment:
        """Keep a private handle on stdout and point fd 1 at stderr, so that whatever a library
        prints (Python or C) lands on stderr and stdout carries only dsocr's data."""
        sys.stdout.flush()
        data = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="surrogateescape")
        os.dup2(2, 1)
        return cls(data=data, err=sys.stderr, stdin=sys.stdin, err_is_tty=sys.stderr.isatty())

    @cached_property
    def console(self) -> Console:
        """The one rich console on stderr. Log lines and the progress bar share it, so a line
        logged while the bar is live is printed above the bar, never into it."""
        return Console(file=self.err)


def setup_logging(env: Environment, verbose: bool, quiet: bool) -> None:
    """One handler, on the root logger, prints every line: dsocr's and the libraries' alike."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if env.err_is_tty:
        handler: logging.Handler = RichHandler(console=env.console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(env.err)
        handler.setFormatter(OriginFormatter("%(origin)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(level)
    logging.getLogger("dsocr_cli").setLevel(level)
    _quiet_libraries(verbose, quiet or not env.err_is_tty)
    _route_library_logs()


class OriginFormatter(logging.Formatter):
    """Names where a plain log line comes from: `dsocr:` for dsocr's own, the library's name otherwise."""

    def format(self, record: logging.LogRecord) -> str:
        """Sets the record's `origin`, which the plain format string needs, then formats as usual."""
        top = record.name.split(".")[0]
        record.origin = "dsocr" if top in ("dsocr", "dsocr_cli", "root") else top
        return super().format(record)


def _quiet_libraries(verbose: bool, no_bars: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if no_bars:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_info() if verbose else hf_logging.set_verbosity_error()
    if no_bars:
        hf_logging.disable_progress_bar()


LIBRARY_LOGGERS = ("transformers", "huggingface_hub")


def _route_library_logs() -> None:
    """transformers and huggingface_hub give their loggers their own stderr handler (transformers
    also stops propagation): a line then came out twice, or was written into the live progress bar.
    Their records go to the root handler alone."""
    with contextlib.suppress(ImportError):
        import huggingface_hub.utils.logging  # noqa: F401  (adds its handler on import: import it first)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class ConsoleEvents:
    """Events -> stderr. On a terminal, a progress bar counting pages (the total read up front,
    documents alongside); one line per document otherwise."""

    def __init__(self, env: Environment, quiet: bool = False):
        self.bar = None
        self.expected: dict[Source, int] = {}  # pages each document should yield (0: unknown)
        self.counted: dict[Source, int] = {}  # pages back from the engine, per document
        self.finished: set[Source] = set()
        self._started: float | None = None
        self.workers: dict[int, dict] = {}  # worker slot -> its latest state
        if env.err_is_tty and not quiet:
            self.bar = _RunProgress(
                TextColumn("[bold]OCR"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("pages · {task.fields[docs]}/{task.fields[documents]} docs · {task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=env.console,  # the log handler's console too: log lines go above the bar
                speed_estimate_period=600,  # pages come in batches minutes apart; keep the ETA steady
            )

    @property
    def counts_pages(self) -> bool:
        """Whether run_started wants page counts (reading them costs an open of every input)."""
        return self.bar is not None

    def run_started(self, documents: int, pages: Mapping[Source, int] | None = None) -> None:
        """Starts the bar; its total is the pages counted up front, grown in `pages_done` where a
        count was missing or short."""
        self.expected = dict(pages or {})
        if self.bar:
            self.bar.start()
            total = sum(self.expected.values())
            self.task = self.bar.add_task("OCR", total=total, docs=0, documents=documents, rate="")

    def rejected(self, item: Rejected) -> None:
        """A passed-over path is a warning, a failed input an error: only the latter fails the run (exit 1)."""
        if item.skipped:
            log.warning("skipped %s", item.message)
        else:
            log.error("%s", item.message)

    def model_loading(self, name: str) -> None:
        """One line before the bar exists: loading (or downloading) the model can take minutes."""
        log.info("loading model %s", name)

    def document_started(self, source: Source) -> None:
        """The pages/s clock starts at the first document, so model loading does not lower the rate."""
        if self._started is None:
            self._started = time.perf_counter()
        if not self.bar:
            log.debug("started %s", show_path(source.path))

    def pages_done(self, pages: Sequence[PageImage]) -> None:
        """Advances the bar and the rate. Pages of a document already finished (failed) are not
        counted; a document yielding more pages than counted grows the total."""
        fresh = [page for page in pages if page.source not in self.finished]
        for page in fresh:
            self.counted[page.source] = self.counted.get(page.source, 0) + 1
        if self.bar:
            grown = sum(1 for page in fresh if self.counted[page.source] > self.expected.get(page.source, 0))
            total = self.bar.tasks[0].total or 0
            elapsed = time.perf_counter() - (self._started or time.perf_counter())
            done = sum(self.counted.values())
            rate = f"{done / elapsed:.2f} pages/s" if elapsed > 0 else ""
            self.bar.update(self.task, advance=len(fresh), total=total + grown, rate=rate)

    def document_finished(self, result: DocumentResult) -> None:
        """One line per document; the bar's total loses the pages this document will never yield."""
        source = result.source
        if self.bar and source not in self.finished:
            # The document's share of the total becomes the pages that really came back: a skipped
            # document gives back all of its pages, a failed one those it will never yield.
            counted = self.counted.get(source, 0)
            unused = max(self.expected.get(source, 0), counted) - counted
            total = self.bar.tasks[0].total or 0
            docs = self.bar.tasks[0].fields["docs"] + 1
            self.bar.update(self.task, total=total - unused, docs=docs)
        self.finished.add(source)
        if result.status == "failed":
            log.error("%s", result.message or f"{show_path(source.path)}: failed")
        elif result.status == "done":
            unfinished = sum(1 for p in result.pages if p.prediction.finish != "eos")
            note = f", {unfinished} page(s) cut short (length/repetition)" if unfinished else ""
            log.info("done %s: %d page(s) in %.1f s%s", show_path(source.path), len(result.pages), result.seconds, note)
        else:
            log.info("skipped %s: %s", show_path(source.path), result.message or "already done")

    def workers_changed(self, workers: list[dict]) -> None:
        """The latest state of each worker (device, host, pages, tok/s, restarts); the log says
        when one dies or starts again, and summary.json keeps the final state."""
        self.workers = {worker["worker"]: worker for worker in workers}
        if self.bar:
            self.bar.worker_lines = [worker_line(w) for _, w in sorted(self.workers.items())]
            self.bar.refresh()

    def run_finished(self) -> None:
        """Stops the live bar, so what is logged after the run prints as plain lines."""
        if self.bar:
            self.bar.stop()
            self.bar = None


class _RunProgress(Progress):
    """The page bar, and under it one line per worker when several engines run."""

    worker_lines: list[str] = []

    def get_renderables(self):
        """Rich calls this on each refresh: the page bar, then one line per worker."""
        yield self.make_tasks_table(self.tasks)
        yield from self.worker_lines


def worker_line(worker: dict) -> str:
    """One worker's state for the terminal: where it runs, what it did, whether it restarted."""
    where = worker.get("gpu") or worker.get("device") or "?"
    host = f" @ {worker['host']}" if worker.get("host") else ""
    restarts = worker.get("restarts", 0)
    again = f" · {restarts} restart{'s' if restarts != 1 else ''}" if restarts else ""
    return (
        f"  worker {worker.get('worker')} · {where}{host} · {worker.get('state', '')} · "
        f"{worker.get('pages', 0)} pages · {worker.get('tokens_per_second', 0):,.0f} tok/s{again}"
    )
