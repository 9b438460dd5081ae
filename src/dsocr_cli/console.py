"""What the user sees on stderr: a rich progress bar on a terminal, plain log lines otherwise,
errors only with --quiet. The one module that imports rich.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
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
from dsocr_cli.types import DocumentResult, Prediction, Source

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


def setup_logging(env: Environment, verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if env.err_is_tty:
        handler: logging.Handler = RichHandler(console=Console(file=env.err), show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(env.err)
        handler.setFormatter(logging.Formatter("dsocr: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(level)
    logging.getLogger("dsocr_cli").setLevel(level)
    _quiet_libraries(verbose, quiet or not env.err_is_tty)


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


class ConsoleEvents:
    """Events -> stderr. A progress bar on a terminal, one line per document otherwise."""

    def __init__(self, env: Environment, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self.pages = 0
        self.workers: dict[int, object] = {}  # worker slot -> its line in the progress display
        if env.err_is_tty and not quiet:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=env.err),
                transient=False,
            )

    def run_started(self, documents: int) -> None:
        if self.bar:
            self.bar.start()
            self.task = self.bar.add_task("OCR", total=documents, detail="docs · 0 pages")
        self._started = None

    def rejected(self, item: Rejected) -> None:
        if item.skipped:
            log.warning("skipped %s", item.message)
        else:
            log.error("%s", item.message)

    def model_loading(self, name: str) -> None:
        log.info("loading model %s", name)

    def document_started(self, source: Source) -> None:
        import time

        if self._started is None:
            self._started = time.perf_counter()
        if not self.bar:
            log.debug("started %s", show_path(source.path))

    def pages_done(self, predictions: list[Prediction]) -> None:
        import time

        self.pages += len(predictions)
        if self.bar:
            elapsed = time.perf_counter() - (self._started or time.perf_counter())
            rate = f"{self.pages / elapsed:.2f} pages/s" if elapsed > 0 else ""
            self.bar.update(self.task, detail=f"docs · {self.pages} pages · {rate}")

    def document_finished(self, result: DocumentResult) -> None:
        if self.bar:
            self.bar.advance(self.task)
        if result.status == "failed":
            log.error("%s", result.message or f"{show_path(result.source.path)}: failed")
        elif result.status == "done":
            unfinished = sum(1 for p in result.pages if p.prediction.finish != "eos")
            note = f", {unfinished} page(s) cut short (length/repetition)" if unfinished else ""
            log.info(
                "done %s: %d page(s) in %.1f s%s",
                show_path(result.source.path),
                len(result.pages),
                result.seconds,
                note,
            )
        else:
            log.info("skipped %s: %s", show_path(result.source.path), result.message or "already done")

    def workers_changed(self, workers: list[dict]) -> None:
        """One line per worker under the bar: where it runs, its pages, tok/s and restarts."""
        if not self.bar:
            return
        for worker in workers:
            where = f"worker {worker['worker']} {worker.get('device', '?')}@{worker.get('host', '?')}"
            detail = (
                f"{worker['pages']} pages · {worker['tokens_per_second']:.0f} tok/s · "
                f"{worker['restarts']} restarts · {worker['state']}"
            )
            task = self.workers.get(worker["worker"])
            if task is None:
                self.workers[worker["worker"]] = self.bar.add_task(where, total=None, detail=detail)
            else:
                self.bar.update(task, description=where, detail=detail)

    def run_finished(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None
