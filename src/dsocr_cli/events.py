"""Progress reaches the user through this protocol alone; stages never see it. The pipeline,
in the main process, is the only caller, but for `workers_changed`: a worker pool (also in the
main process) reports its workers' state there. `NoEvents` is the silent default (tests, the Python API).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from dsocr_cli.discover import Rejected
from dsocr_cli.types import DocumentResult, PageImage, Source


class Events(Protocol):
    """`run_started` gets the page count of each document where known (`counts_pages` says whether
    it wants them: reading them opens every input); `pages_done` gets the pages back from the engine."""

    counts_pages: bool

    def run_started(self, documents: int, pages: Mapping[Source, int] | None = None) -> None:
        """Once, before the first document starts; `pages` is given only when `counts_pages` asks for it."""
        ...

    def rejected(self, item: Rejected) -> None:
        """Once per argument or walked file that will not be processed, before the run starts."""
        ...

    def model_loading(self, name: str) -> None:
        """Before the engine loads, which may take minutes (a download); nothing runs yet."""
        ...

    def document_started(self, source: Source) -> None:
        """When a document is opened for rendering; a skipped one never starts."""
        ...

    def pages_done(self, pages: Sequence[PageImage]) -> None:
        """After each batch or page back from the engine, with the pages that got a prediction; pages of
        a document that already failed may still come."""
        ...

    def document_finished(self, result: DocumentResult) -> None:
        """Once per document that ends: done, skipped (already done) or failed; an interrupted run's open
        documents get none."""
        ...

    def workers_changed(self, workers: list[dict]) -> None:
        """From a worker pool: every worker's latest state, at most about twice a second."""
        ...

    def run_finished(self) -> None:
        """Once, when `Pipeline.run` ends, normally or not."""
        ...


class NoEvents:
    """Shows nothing and asks for no page counts: the default of tests and the Python API."""

    counts_pages = False

    def run_started(self, documents: int, pages: Mapping[Source, int] | None = None) -> None:
        """Nothing shown; no input was opened to count its pages (`counts_pages` is False)."""

    def rejected(self, item: Rejected) -> None:
        """Nothing shown."""

    def model_loading(self, name: str) -> None:
        """Nothing shown."""

    def document_started(self, source: Source) -> None:
        """Nothing shown."""

    def pages_done(self, pages: Sequence[PageImage]) -> None:
        """Nothing shown."""

    def document_finished(self, result: DocumentResult) -> None:
        """Nothing shown."""

    def workers_changed(self, workers: list[dict]) -> None:
        """Nothing shown."""

    def run_finished(self) -> None:
        """Nothing shown."""
