"""Markdown to stdout, documents in input order, nothing else on that stream."""

from __future__ import annotations

from typing import TextIO

from dsocr_cli.grounding import to_markdown
from dsocr_cli.types import PageResult, Source
from dsocr_cli.writers.document import join_pages


class DocumentText:
    """Collects one document's markdown; figures have no file to link to here, so they are left out."""

    def __init__(self, source: Source):
        self.source = source
        self.markdown: dict[int, str] = {}

    def add_page(self, result: PageResult) -> None:
        """Kept by page index: pages come back in any order."""
        self.markdown[result.page.index] = to_markdown(result.parsed.blocks)

    def commit(self, fingerprint: dict, settings: dict, seconds: float) -> list[str]:
        """No files: the text is printed when the output hears the document finished."""
        return []

    def abort(self) -> None:
        """Drops the collected markdown; a failed document prints nothing."""
        self.markdown.clear()

    def text(self) -> str:
        """The document's markdown in page order, joined as document.md would be."""
        return join_pages([(i + 1, self.markdown[i]) for i in sorted(self.markdown)])


class OrderedPrinter:
    """Prints each finished document's markdown as soon as all earlier documents have finished."""

    def __init__(self, stream: TextIO, order: list[str]):
        self.stream = stream
        self.order = order
        self.ready: dict[str, str | None] = {}
        self.next = 0

    def finished(self, key: str, markdown: str | None) -> None:
        """Record a document's markdown (None: failed, nothing to print), then print, in input order,
        every document no longer waiting on an earlier one."""
        self.ready[key] = markdown
        while self.next < len(self.order) and self.order[self.next] in self.ready:
            key = self.order[self.next]
            text = self.ready.pop(key)
            if text is not None:
                if len(self.order) > 1:
                    self.stream.write(f"<!-- dsocr:document {key} -->\n\n")
                self.stream.write(text if text.endswith("\n") else text + "\n")
                self.stream.flush()
            self.next += 1


class StdoutOutput:
    """Output for no `-o` (or `-o -`): each document's markdown on stdout, in input order."""

    def __init__(self, stream: TextIO, sources: list[Source]):
        self.printer = OrderedPrinter(stream, [s.key for s in sources])

    def open(self, source: Source) -> DocumentText:
        """An in-memory collector: nothing is written until the document finishes."""
        return DocumentText(source)

    def finished(self, result, sink: DocumentText) -> None:
        """Hand the document to the printer; a failed one prints nothing but stops holding back the next."""
        self.printer.finished(result.source.key, sink.text() if result.status == "done" else None)

    def is_done(self, source: Source, settings: dict) -> bool:
        """Never: without an output tree there is no record to resume from."""
        return False

    def write_summary(self, record: dict) -> None:
        """No OUT, no summary.json: None, so the final log line names no file."""
        return None

    def close(self) -> None:
        """Nothing to release: no lock, no writer threads."""
