"""Sources -> pages -> batches -> engine -> grounding -> writers, in one direction.

`run` raises nothing for a bad document: each ends as done or failed in the RunSummary, and the
exit code is decided from the summary after the run. Only setup errors and interrupts escape.

A document whose pages are all in is committed on a background thread (its sink waits there for the
files and PDFs the writers' processes make), so the engine is fed while documents are written; the
outcome is recorded from the main thread once the commit ends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from typing import Protocol

from dsocr_cli import grounding, interrupt
from dsocr_cli.discover import Rejected
from dsocr_cli.engines import Engine
from dsocr_cli.errors import DsocrError, ExitCode, show_path
from dsocr_cli.events import Events, NoEvents
from dsocr_cli.options import Options, settings_record
from dsocr_cli.render import fingerprint
from dsocr_cli.schedule import Batcher, Failed, Rendered, Started, page_stream
from dsocr_cli.types import DocumentResult, PageImage, PageResult, Prediction, RunSummary, Source

log = logging.getLogger(__name__)

COMMITTERS = 8  # documents committed at once in the background; the next waits for the oldest


class DocumentSink(Protocol):
    """One document's output as its pages arrive. It ends with `commit`, or with `abort` (also after
    a commit that raised)."""

    def add_page(self, result: PageResult) -> None:
        """Per page, in the order pages come back, not page order; a raise fails this document alone."""
        ...

    def commit(self, fingerprint: dict, settings: dict, seconds: float) -> list[str]:
        """Once every page is in: make the output whole and return the files written; a raise fails the
        document, and `abort` follows."""
        ...

    def abort(self) -> None:
        """The document failed or the run stopped: leave nothing half-written (the sink may have no page)."""
        ...


class Output(Protocol):
    """Where a run's documents go (an OUT tree or stdout): the resume check, and one sink per document."""

    def is_done(self, source: Source, settings: dict) -> bool:
        """Before a document renders: True skips it as done earlier with the same input and `settings`."""
        ...

    def open(self, source: Source) -> DocumentSink:
        """When a document starts, or fails before it started: a fresh sink for it alone."""
        ...

    def finished(self, result: DocumentResult, sink: DocumentSink) -> None:
        """After each done or failed document, its sink already committed or aborted; never for a skipped one."""
        ...


@dataclass
class _OpenDocument:
    source: Source
    sink: DocumentSink
    started: float
    fingerprint: dict  # taken before rendering, so a file replaced mid-run is not recorded as done
    expected: int | None = None
    pages: list[PageResult] = field(default_factory=list)


@dataclass
class _Committing:
    doc: _OpenDocument
    seconds: float
    future: Future  # the sink's commit: its output files, or why it failed


class Pipeline:
    """Drives one run: pages to the engine, predictions to their documents' sinks, each outcome to the
    summary and the events. One instance per run."""

    def __init__(self, options: Options, engine: Engine, output: Output, events: Events | None = None):
        self.options = options
        self.engine = engine
        self.output = output
        self.events = events or NoEvents()
        self.settings = settings_record(options)
        self.open: dict[Source, _OpenDocument] = {}
        self.summary = RunSummary()
        self.batcher: Batcher | None = None
        self.closed: set[Source] = set()  # documents with a result: each input is reported once
        self.committing: deque[_Committing] = deque()
        self.committer: ThreadPoolExecutor | None = None

    def run(self, sources: Sequence[Source]) -> RunSummary:
        """Every source ends in the summary as done, skipped or failed. Only setup errors and interrupts
        raise, after the open documents are aborted."""
        started = time.perf_counter()
        self.committer = ThreadPoolExecutor(COMMITTERS, thread_name_prefix="dsocr-commit")
        try:
            if getattr(self.engine, "continuous", False):
                self._run_continuous(sources)
            else:
                self._run_batches(sources)
            self._settle(keep=0)
            interrupt.check()
        except (KeyboardInterrupt, DsocrError) as exc:
            self.summary.interrupted = isinstance(exc, KeyboardInterrupt)
            for doc in list(self.open.values()):
                doc.sink.abort()
            self._abandon_commits()
            raise
        finally:
            self.committer.shutdown(wait=True)
            self.summary.seconds = time.perf_counter() - started
            self.events.run_finished()
        return self.summary

    def _run_batches(self, sources: Sequence[Source]) -> None:
        self._batches(self._pages(sources, on_failed=self._drop_pending))

    def _batches(self, pages) -> None:
        """Pages collected into batches for `predict`; a failed document's pages are dropped."""
        self.batcher = batcher = Batcher(self.engine.batch_size)
        for page in pages:
            batch = batcher.add(page)
            if batch:
                self._process(batch)
        while batcher.pending:
            self._process(batcher.take())

    def _drop_pending(self, source: Source) -> None:
        if self.batcher is not None:
            self.batcher.drop(source)

    def _run_continuous(self, sources: Sequence[Source]) -> None:
        """The engine pulls pages as its slots free up and hands each back when it ends. If the
        decoder itself breaks, the remaining pages go through `predict` in batches, and only the
        documents whose pages were inside the decoder fail."""
        prompt = self.options.task.text
        pages = self._pages(sources, on_failed=self._drop_pending)
        stream = self.engine.stream(pages, prompt)
        while True:
            try:
                page, prediction = next(stream)
            except StopIteration:
                break
            except (DsocrError, KeyboardInterrupt):
                raise
            except Exception as exc:
                log.error("continuous batching failed (%s); going on with batched generate", _one_line(exc))
                log.debug("decoder failure", exc_info=True)
                self._batches(pages)
                self._fail_open("engine", f"pages lost when decoding failed ({_one_line(exc)})")
                return
            self.events.pages_done([page] if isinstance(prediction, Prediction) else [])
            predicted = [(page, prediction)]
            self._handle(
                predicted
                if getattr(self.engine, "retries_inside", False)
                else self._retry_unfinished(predicted, prompt)
            )
        self._fail_open("engine", "pages never came back from the engine")

    def _fail_open(self, reason: str, why: str) -> None:
        """Documents still open once every page has been through the engine lost pages in it."""
        for doc in list(self.open.values()):
            self._fail(doc.source, reason, f"{show_path(doc.source.path)}: {why}")

    def _pages(self, sources: Sequence[Source], on_failed=None):
        """The pages of open documents, acting on each document's start, end and failure on the way."""
        render = self.options.render
        for item in page_stream(self._to_do(sources), render, prepare=self._preparer(), workers=render.workers):
            interrupt.check()
            if isinstance(item, PageImage):
                if item.source in self.open:
                    yield item
            elif isinstance(item, Started):
                self._start(item.source)
            elif isinstance(item, Rendered):
                self._rendered(item.source, item.pages)
            elif isinstance(item, Failed):
                if on_failed:
                    on_failed(item.source)
                self._fail(item.source, item.error.reason, item.error.one_line())

    def _preparer(self):
        """The engine's preprocessing, where it asks for it to run in the render workers."""
        if getattr(self.engine, "prepare_in_renderer", False):
            return self.engine.preparer(self.options.task.text)
        return None

    def _to_do(self, sources: Sequence[Source]):
        """Sources not already done with the same input and settings (resume); the rest are skipped."""
        for source in sources:
            if self.output.is_done(source, self.settings):
                result = DocumentResult(source, "skipped", reason="done", message="already done with these settings")
                self.summary.documents.append(result)
                self.events.document_finished(result)
            else:
                yield source

    def _start(self, source: Source) -> None:
        try:
            taken = fingerprint(source.path)
        except OSError as exc:
            self._fail(source, "unreadable", f"{show_path(source.path)}: cannot be read ({exc.strerror or exc})")
            return
        self.open[source] = _OpenDocument(source, self.output.open(source), time.perf_counter(), taken)
        self.events.document_started(source)

    def _rendered(self, source: Source, pages: int) -> None:
        doc = self.open.get(source)
        if doc is not None:
            doc.expected = pages
            self._maybe_commit(doc)

    def _process(self, batch: list[PageImage]) -> None:
        prompt = self.options.task.text
        predicted = self._retry_unfinished(self._predict(batch, prompt), prompt)
        self.events.pages_done([page for page, p in predicted if isinstance(p, Prediction)])
        self._handle(predicted)

    def _handle(self, predicted: list[tuple[PageImage, Prediction | Exception]]) -> None:
        """Parse each page's output and hand it to its document; commit documents that are whole."""
        for page, prediction in predicted:
            interrupt.check()
            doc = self.open.get(page.source)
            if doc is None:
                continue
            if not isinstance(prediction, Prediction):
                where = f"{show_path(page.source.path)}: page {page.number}"
                reason = getattr(prediction, "reason", "engine")  # a worker pool's lost page: "worker"
                self._fail(page.source, reason, f"{where}: {_one_line(prediction)}")
                continue
            parsed = grounding.parse(prediction.text, *page.size)
            try:
                doc.sink.add_page(PageResult(page, prediction, parsed))
            except Exception as exc:  # a page's files cannot be written: this document fails, the run goes on
                log.debug("writing a page failed", exc_info=True)
                where = f"{show_path(page.source.path)}: page {page.number}"
                self._fail(page.source, "output", f"{where}: cannot write its output ({_one_line(exc)})")
                continue
            # Keep the page's record but not its pixels: long documents must not pile up images.
            doc.pages.append(PageResult(dataclasses.replace(page, image=None, inputs=None), prediction, parsed))
            self._maybe_commit(doc)

    def _retry_unfinished(self, predicted: list, prompt: str) -> list:
        """Pages that looped or hit the token limit get one strict retry; the retry's result is
        kept (and marked), never the first attempt passed off as fine."""
        unfinished = [page for page, p in predicted if isinstance(p, Prediction) and p.finish != "eos"]
        if not unfinished or not self.options.engine.retry_unfinished:
            return predicted
        log.info("retrying %d page(s) that did not finish, with stricter repetition control", len(unfinished))
        again = dict(self._predict(unfinished, prompt, strict=True))
        return [
            (page, dataclasses.replace(again[page], attempts=2) if isinstance(again.get(page), Prediction) else p)
            for page, p in predicted
        ]

    def _predict(
        self, batch: list[PageImage], prompt: str, strict: bool = False
    ) -> list[tuple[PageImage, Prediction | Exception]]:
        """Predict a batch; when it fails, split it, so that only a page failing alone is lost."""
        try:
            return list(zip(batch, self.engine.predict(batch, prompt, strict=strict), strict=True))
        except (DsocrError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if len(batch) == 1:
                log.debug("page failed", exc_info=True)
                return [(batch[0], exc)]
            log.warning("a batch of %d pages failed (%s); retrying in halves", len(batch), _one_line(exc))
            half = len(batch) // 2
            return self._predict(batch[:half], prompt, strict) + self._predict(batch[half:], prompt, strict)

    def _maybe_commit(self, doc: _OpenDocument) -> None:
        self._settle(keep=COMMITTERS)
        if doc.expected is None or len(doc.pages) < doc.expected:
            return
        del self.open[doc.source]
        seconds = time.perf_counter() - doc.started
        future = self.committer.submit(doc.sink.commit, doc.fingerprint, self.settings, seconds)
        self.committing.append(_Committing(doc, seconds, future))

    def _settle(self, keep: int) -> None:
        """Record every document whose commit has ended, first waiting for the oldest while more
        than `keep` are still being written."""
        while len(self.committing) > keep:
            wait_all([self.committing[0].future])  # interrupted here, it is still there for _abandon_commits
            self._committed(self.committing.popleft())
        for commit in [c for c in self.committing if c.future.done()]:
            self.committing.remove(commit)
            self._committed(commit)

    def _committed(self, commit: _Committing) -> None:
        doc = commit.doc
        try:
            outputs = commit.future.result()
        except Exception as exc:  # a full disk, an unwritable name: this document fails, the run goes on
            log.debug("writing %s failed", doc.source.key, exc_info=True)
            doc.sink.abort()
            self._record(DocumentResult(doc.source, "failed", reason="output", message=_one_line(exc)), doc.sink)
            return
        pages = tuple(sorted(doc.pages, key=lambda p: p.page.index))
        result = DocumentResult(doc.source, "done", pages, seconds=commit.seconds, outputs=tuple(outputs))
        self._record(result, doc.sink)

    def _abandon_commits(self) -> None:
        """On an interrupt, documents still being committed are aborted; one whose folder was
        already moved into place is recorded as done."""
        for commit in self.committing:
            commit.future.cancel()
            commit.doc.sink.abort()
        wait_all([c.future for c in self.committing])
        for commit in self.committing:
            if not commit.future.cancelled() and commit.future.exception() is None:
                self._committed(commit)
        self.committing.clear()

    def _fail(self, source: Source, reason: str, message: str) -> None:
        if source in self.closed:  # already reported (e.g. unreadable before its render failed too)
            return
        doc = self.open.pop(source, None)
        sink = doc.sink if doc else self.output.open(source)
        sink.abort()
        seconds = time.perf_counter() - doc.started if doc else 0.0
        self._record(DocumentResult(source, "failed", reason=reason, message=message, seconds=seconds), sink)

    def _record(self, result: DocumentResult, sink: DocumentSink) -> None:
        self.closed.add(result.source)
        self.summary.documents.append(result)
        self.output.finished(result, sink)
        self.events.document_finished(result)


def exit_code(summary: RunSummary, rejected: list[Rejected]) -> ExitCode:
    """Decided after the run from the outcomes: an interrupt first, then any failed document or
    rejected argument (a path merely passed over does not count)."""
    if summary.interrupted:
        return ExitCode.INTERRUPTED
    if summary.count("failed") or any(not r.skipped for r in rejected):
        return ExitCode.FAILED_INPUTS
    return ExitCode.OK


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, DsocrError):
        return exc.one_line()
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
