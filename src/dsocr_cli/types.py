"""The values that flow between stages. Frozen dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL import Image

SourceKind = Literal["pdf", "image"]
FinishReason = Literal["eos", "length", "repetition"]
Status = Literal["done", "skipped", "failed"]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Source:
    """One input document and where its outputs go (`key`, a relative POSIX path under OUT)."""

    path: Path
    kind: SourceKind
    key: str


@dataclass(frozen=True)
class PageImage:
    """One rendered page. `scale` maps page-image pixels back to PDF points (points = px / scale)."""

    source: Source
    index: int  # 0-based page index in the document
    image: Image.Image = field(repr=False, compare=False)
    dpi: float | None = None
    scale: float = 1.0
    # The model's inputs for this page (tensors by name) when the engine's preprocessing ran in the renderer.
    inputs: dict | None = field(default=None, repr=False, compare=False)

    @property
    def number(self) -> int:
        """1-based, as users, --pages and the output file names count pages."""
        return self.index + 1

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the rendered image: the pixel space block boxes are given in."""
        return self.image.size


@dataclass(frozen=True)
class Prediction:
    """What an engine returns for one page."""

    text: str
    tokens: int
    finish: FinishReason
    seconds: float
    attempts: int = 1  # 2 when the page was retried after looping or hitting the token limit


@dataclass(frozen=True)
class Block:
    """One layout block: a label, its boxes in page-image pixels, and its text."""

    label: str
    boxes: tuple[Box, ...]
    text: str
    order: int


@dataclass(frozen=True)
class ParsedPage:
    """Grounding output parsed: blocks in reading order and the defects met on the way."""

    blocks: tuple[Block, ...]
    defects: tuple[str, ...] = ()


@dataclass(frozen=True)
class PageResult:
    """One page after the engine and grounding, handed to its document's sink; the pipeline keeps a
    copy without the pixels."""

    page: PageImage
    prediction: Prediction
    parsed: ParsedPage


@dataclass(frozen=True)
class DocumentResult:
    """How one input ended, as the summary, the events and the exit code see it."""

    source: Source
    status: Status
    pages: tuple[PageResult, ...] = ()
    reason: str | None = None  # a short class: "unreadable", "encrypted", "engine", ...
    message: str | None = None
    seconds: float = 0.0
    outputs: tuple[str, ...] = ()


@dataclass
class RunSummary:
    """Filled in as documents finish; decides the exit code after the run."""

    documents: list[DocumentResult] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def count(self, status: Status) -> int:
        """Documents with this status; rejected arguments are not documents and are counted apart."""
        return sum(1 for d in self.documents if d.status == status)

    @property
    def pages(self) -> int:
        """Pages of the documents done in this run: skipped and failed documents hold none."""
        return sum(len(d.pages) for d in self.documents)

    @property
    def tokens(self) -> int:
        """Tokens generated for those pages: the throughput of the summary."""
        return sum(p.prediction.tokens for d in self.documents for p in d.pages)
