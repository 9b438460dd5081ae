"""Pages -> batches. Rendering is lazy and pages from many documents share a batch, so a
500-page PDF and 500 single photos keep the engine equally busy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dsocr_cli.errors import InputError
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


def page_stream(sources: Iterable[Source], options: RenderOptions) -> Iterator[Item]:
    """Each document's pages framed by Started and Rendered (or Failed, after which none follow)."""
    for source in sources:
        yield Started(source)
        count = 0
        try:
            for page in render(source, options):
                count += 1
                yield page
        except InputError as exc:
            yield Failed(source, exc)
            continue
        yield Rendered(source, count)


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
