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

    def run_started(self, documents: int, pages: Mapping[Source, int] | None = None) -> None: ...
    def rejected(self, item: Rejected) -> None: ...
    def model_loading(self, name: str) -> None: ...
    def document_started(self, source: Source) -> None: ...
    def pages_done(self, pages: Sequence[PageImage]) -> None: ...
    def document_finished(self, result: DocumentResult) -> None: ...
    def workers_changed(self, workers: list[dict]) -> None: ...
    def run_finished(self) -> None: ...


class NoEvents:
    counts_pages = False

    def run_started(self, documents: int, pages: Mapping[Source, int] | None = None) -> None:
        pass

    def rejected(self, item: Rejected) -> None:
        pass

    def model_loading(self, name: str) -> None:
        pass

    def document_started(self, source: Source) -> None:
        pass

    def pages_done(self, pages: Sequence[PageImage]) -> None:
        pass

    def document_finished(self, result: DocumentResult) -> None:
        pass

    def workers_changed(self, workers: list[dict]) -> None:
        pass

    def run_finished(self) -> None:
        pass
