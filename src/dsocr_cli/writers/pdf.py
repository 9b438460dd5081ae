"""PDF outputs: searchable PDFs (an invisible OCR text layer) and the layout PDF (annotated pages).

Pure: values in, PDF bytes out; the caller writes the files atomically.

Geometry. Block boxes are in pixels of the rendered page image, and points = px / scale are in the
page as displayed (PyMuPDF's `page.rect`: rotation applied, origin at the crop box's top-left),
because that is what `get_pixmap` rendered for the model. PyMuPDF writes and extracts text in
unrotated page space, so each box goes there through `page.derotation_matrix`, and the text is
turned by the page's rotation about the box centre: it then reads left to right on screen, as on
the image the model saw. `TextWriter.write_text` itself accounts for a crop or media box whose
origin is not (0, 0).

Text layer. One invisible run (PDF render mode 3) per block box: the block's lines wrapped at
spaces at the largest font size (found by bisection) whose lines fill the box without cutting a
word, so search finds every word and selection highlights cover about the block's area. MuPDF picks
fallback fonts for characters Helvetica lacks (CJK, Arabic, ...), which keeps them searchable. A
block with several boxes has its words split across the boxes in order, in proportion to box area
(the model gives no finer alignment). `image` blocks and blocks without boxes get no text.
Markdown/HTML/LaTeX markup is stripped from the layer, words are kept.

Fonts are embedded; they are cut to the used glyphs (MuPDF's subsetter) only when the source has no
fonts of its own (always for image sources), because the subsetter rewrites every font of the
document and the original fonts must stay exactly as they were (streams are only re-compressed).
A born-digital source thus carries the layer's fonts whole (about 25 kB for Helvetica, about
1.7 MB once a CJK fallback font is needed).
"""

from __future__ import annotations

import html
import io
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dsocr_cli.types import Box

if TYPE_CHECKING:
    import pymupdf
    from PIL import Image

    from dsocr_cli.types import PageResult

MIN_FONT_SIZE = 0.5  # points; text that does not fit a box even at this size is cut
MAX_FONT_SIZE = 72.0
IMAGE_JPEG_QUALITY = 90  # page images of image sources (4:4:4, so thin strokes stay sharp)
LAYOUT_JPEG_QUALITY = 85  # as the annotated page JPEGs of the OUT tree


@dataclass(frozen=True)
class PageText:
    """One OCRed page as the PDF writers need it: boxes in page-image pixels, `scale` px per point."""

    number: int  # 1-based page (or frame) number in the source
    width_px: int
    height_px: int
    scale: float  # px per PDF point; 1.0 for images
    blocks: tuple[tuple[str, tuple[Box, ...], str], ...]  # (label, boxes, text)

    @classmethod
    def from_result(cls, result: PageResult) -> PageText:
        """Build from a pipeline PageResult, so callers need not know the tuple layout."""
        width, height = result.page.size
        blocks = tuple((b.label, b.boxes, b.text) for b in result.parsed.blocks)
        return cls(result.page.number, width, height, result.page.scale, blocks)


# ---------------------------------------------------------------------------------------------
# Public entry points


def searchable_pdf(
    source_path: Path | None,
    kind: str,
    pages: list[PageText],
    images: dict[int, Image.Image] | None = None,
    *,
    password: str | None = None,
) -> bytes:
    """The source with an invisible, searchable text layer on each OCRed page.

    PDF sources keep every original page as it was: only text is added, unprocessed pages are not
    touched at all, and an encrypted source stays encrypted (`password` opens it). Image sources
    become a new PDF, one page per entry of `pages`, the image drawn at 1 px = 1 pt when scale is
    1.0 (page size = pixels / scale points), so the page geometry matches `boxes_px` of
    document.json exactly. `images` maps page numbers to the rendered images; a missing one is
    read from `source_path`.
    """
    import pymupdf

    if kind == "pdf":
        if source_path is None:
            raise ValueError("a PDF source needs source_path")
        with pymupdf.open(source_path, filetype="pdf") as doc:
            if doc.needs_pass and not (password and doc.authenticate(password)):
                raise ValueError(f"{source_path}: encrypted, and no valid password given")
            return _layer_pdf(doc, pages)
    if kind == "image":
        return _image_pdf(source_path, pages, images or {})
    raise ValueError(f"unknown source kind {kind!r}")


def layout_pdf(images: Sequence[Image.Image], dpi: float = 144.0) -> bytes:
    """Annotated page images in one PDF, one page each, JPEG-compressed to keep the file small.

    Page size is pixels * 72 / dpi: with the default (dsocr's render DPI) a rendered A4 page comes
    back as an A4 page; the aspect ratio is the image's whatever dpi is.
    """
    import pymupdf

    if not images:
        raise ValueError("layout_pdf needs at least one image")
    doc = pymupdf.open()
    for image in images:
        page = doc.new_page(width=image.width * 72 / dpi, height=image.height * 72 / dpi)
        page.insert_image(page.rect, stream=_jpeg(image, LAYOUT_JPEG_QUALITY))
    return doc.tobytes(garbage=3, deflate=True)


# ---------------------------------------------------------------------------------------------
# Sources


def _layer_pdf(doc: pymupdf.Document, pages: list[PageText]) -> bytes:
    """Add the layer to each OCRed page; subset fonts only where no original font can be hit."""
    import pymupdf

    had_fonts = _has_fonts(doc)
    font = pymupdf.Font("helv")
    for page_text in pages:
        if not 1 <= page_text.number <= doc.page_count:
            raise ValueError(f"page {page_text.number} is outside the document (1..{doc.page_count})")
        add_text_layer(doc[page_text.number - 1], page_text, font)
    if not had_fonts:
        doc.subset_fonts()
    # garbage=1 drops only unreferenced objects (the fonts replaced by subsets), no renumbering;
    # an encrypted source stays encrypted with its own keys (tobytes would decrypt by default).
    return doc.tobytes(garbage=1, deflate=True, encryption=pymupdf.PDF_ENCRYPT_KEEP)


def _image_pdf(source_path: Path | None, pages: list[PageText], images: dict[int, Image.Image]) -> bytes:
    """A new PDF: each image as a page background, the text layer on top."""
    import pymupdf

    if not pages:
        raise ValueError("an image source needs at least one page")
    doc = pymupdf.open()
    font = pymupdf.Font("helv")
    for page_text in pages:
        image = images.get(page_text.number)
        if image is None:
            image = _read_frame(source_path, page_text.number)
        page = doc.new_page(width=image.width / page_text.scale, height=image.height / page_text.scale)
        page.insert_image(page.rect, stream=_jpeg(image, IMAGE_JPEG_QUALITY), keep_proportion=False)
        add_text_layer(page, page_text, font)
    doc.subset_fonts()  # only our fonts are in this document
    return doc.tobytes(garbage=3, deflate=True)


def _read_frame(path: Path | None, number: int) -> Image.Image:
    """The frame as render.py gives it to the model: EXIF orientation applied, RGB."""
    from PIL import Image, ImageOps

    from dsocr_cli.render import to_rgb

    if path is None:
        raise ValueError(f"no image for page {number} and no source_path to read it from")
    with Image.open(path) as image:
        image.seek(number - 1)
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))


def _has_fonts(doc: pymupdf.Document) -> bool:
    """Whether any object of the document is a font (pages, forms, annotations alike)."""
    for xref in range(1, doc.xref_length()):
        try:
            if doc.xref_get_key(xref, "Type") == ("name", "/Font"):
                return True
        except Exception:  # a broken object is not a font we could damage
            continue
    return False


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The text layer


def add_text_layer(page: pymupdf.Page, page_text: PageText, font: pymupdf.Font | None = None) -> int:
    """Write each block's text invisibly into its boxes on `page`. Returns the runs written.

    The page's own content is wrapped in q/Q first (if it is not already), so a graphics state it
    leaves behind cannot move or clip the layer; that adds no marks.
    """
    import pymupdf

    metrics = _Metrics(font or pymupdf.Font("helv"))
    runs: list[tuple[pymupdf.Rect, str]] = []
    for label, boxes, raw in page_text.blocks:
        if label == "image":
            continue
        rects = _page_rects(page, boxes, page_text.scale)
        usable = [(box, rect) for box, rect in zip(boxes, rects, strict=True) if rect is not None]
        parts = split_by_area(layer_text(raw), [box for box, _ in usable])
        runs.extend((rect, part) for (_, rect), part in zip(usable, parts, strict=True) if part)
    if runs and not page.is_wrapped:
        page.wrap_contents()
    return sum(_write_run(page, rect, text, metrics) for rect, text in runs)


def _page_rects(page: pymupdf.Page, boxes: Iterable[Box], scale: float) -> list[pymupdf.Rect | None]:
    """Pixel boxes -> rects in displayed page points, clipped to the page; None when (nearly) empty."""
    import pymupdf

    rects: list[pymupdf.Rect | None] = []
    for box in boxes:
        rect = pymupdf.Rect(*(v / scale for v in box)) & page.rect
        rects.append(rect if rect.width >= 1 and rect.height >= 1 else None)
    return rects


def _write_run(page: pymupdf.Page, shown: pymupdf.Rect, text: str, metrics: _Metrics) -> int:
    """Lay `text` out in the displayed rect `shown`, turned to read upright on screen, invisible."""
    import pymupdf

    size, lines = _layout(shown.width, shown.height, text, metrics)
    if not lines:
        return 0
    target = shown * page.derotation_matrix  # the same area in unrotated page space
    centre = (target.tl + target.br) / 2
    writer = pymupdf.TextWriter(page.rect)
    x, y = centre.x - shown.width / 2, centre.y - shown.height / 2 + size * metrics.ascender
    for line in lines:  # laid out upright around the centre, then turned with the page
        writer.append((x, y), line, font=metrics.font, fontsize=size)
        y += size * metrics.line_height
    morph = (centre, pymupdf.Matrix(page.rotation)) if page.rotation else None
    writer.write_text(page, render_mode=3, morph=morph)
    return 1


class _Metrics:
    """Advance widths at font size 1, cached: MuPDF's measuring costs a Python call per character."""

    def __init__(self, font: pymupdf.Font):
        self.font = font
        self.ascender = font.ascender
        self.line_height = max(font.ascender - font.descender, 1.0)
        self._widths: dict[str, float] = {}

    def width(self, text: str) -> float:
        """Width at size 1, with MuPDF's fallback fonts for characters the font lacks."""
        known = self._widths.get(text)
        if known is None:
            known = sum(map(self.width, text)) if len(text) > 1 else self.font.text_length(text, fontsize=1)
            self._widths[text] = known
        return known


def _layout(width: float, height: float, text: str, metrics: _Metrics) -> tuple[float, list[str]]:
    """The largest font size whose wrapped lines fill at most width x height, and those lines.

    Words are never cut, so search finds them: a tall, narrow box (vertical text) gets a small font
    instead. Only when nothing fits at MIN_FONT_SIZE are long words cut and surplus lines dropped.
    """
    paragraphs = [line.split() for line in text.splitlines() if line.strip()]
    longest = max((metrics.width(w) for words in paragraphs for w in words), default=0.0)
    if not longest:
        return MIN_FONT_SIZE, []

    def fits(size: float) -> bool:
        room = width / size
        return longest <= room and len(_wrap(paragraphs, metrics, room)) * size * metrics.line_height <= height

    low, high = MIN_FONT_SIZE, max(min(MAX_FONT_SIZE, height / metrics.line_height, width / longest), MIN_FONT_SIZE)
    if fits(high):
        return high, _wrap(paragraphs, metrics, width / high)
    if not fits(low):
        room_lines = max(int(height / (low * metrics.line_height)), 1)
        return low, _wrap(paragraphs, metrics, width / low, cut=True)[:room_lines]
    for _ in range(10):  # bisection to 1/1000 of the range
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, _wrap(paragraphs, metrics, width / low)


def _wrap(paragraphs: list[list[str]], metrics: _Metrics, room: float, cut: bool = False) -> list[str]:
    """Greedy line breaking at spaces into lines at most `room` wide (size-1 units); paragraphs
    start new lines. With `cut`, words wider than the room are cut into pieces that fit."""
    lines: list[str] = []
    space = metrics.width(" ")
    for words in paragraphs:
        line: list[str] = []
        used = 0.0
        for word in (piece for w in words for piece in (_cut(w, metrics, room) if cut else (w,))):
            needed = metrics.width(word) + (space if line else 0.0)
            if line and used + needed > room:
                lines.append(" ".join(line))
                line, used, needed = [], 0.0, metrics.width(word)
            line.append(word)
            used += needed
        lines.append(" ".join(line))
    return lines


def _cut(word: str, metrics: _Metrics, room: float) -> list[str]:
    """`word` in pieces no wider than `room` (at least one character each)."""
    pieces, current, used = [], "", 0.0
    for char in word:
        advance = metrics.width(char)
        if current and used + advance > room:
            pieces.append(current)
            current, used = "", 0.0
        current += char
        used += advance
    return [*pieces, current] if current else pieces


# ---------------------------------------------------------------------------------------------
# Text preparation

_TAG_BREAK = re.compile(r"</?(?:tr|p|div|br|li|ul|ol|table|thead|tbody|h[1-6])\b[^<>]*>", re.I)
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]*", re.M)
_QUOTE_OR_BULLET = re.compile(r"^[ \t]*(?:>[ \t]?)+|^[ \t]*[-*+][ \t]+", re.M)
_TABLE_RULE = re.compile(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", re.M)
_EMPHASIS = re.compile(r"\*\*|__|~~|`+")
_SINGLE_EMPHASIS = re.compile(r"(?<![\w*])[*_](?=\S)([^*_\n]*?\S)[*_](?![\w*])")
_MATH_DELIMITERS = re.compile(r"\$\$|\\\[|\\\]|\\\(|\\\)|(?<!\\)\$")
_SPACES = re.compile(r"[ \t\f\v]+")


def layer_text(markdown: str) -> str:
    """Block text as plain words for the text layer: markdown, HTML tags and math delimiters removed.

    Table cells are separated by spaces, rows and paragraphs by line breaks; characters a PDF text
    string cannot carry (controls, surrogates, non-characters) are dropped. Words are never removed.
    """
    text = _TAG_BREAK.sub("\n", markdown)
    text = html.unescape(_TAG.sub(" ", text))
    text = _LINK.sub(r"\1", _IMAGE_LINK.sub(r"\1", text))
    text = _TABLE_RULE.sub("", text)
    text = _QUOTE_OR_BULLET.sub("", _HEADING.sub("", text))
    text = _SINGLE_EMPHASIS.sub(r"\1", _EMPHASIS.sub("", text))
    text = _MATH_DELIMITERS.sub(" ", text).replace("|", " ")
    text = "".join(_layer_char(c) for c in text)
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _layer_char(char: str) -> str:
    """Controls become spaces (line breaks stay); surrogates, private-use and unassigned go."""
    if char in "\n\r":
        return char
    category = unicodedata.category(char)
    if category in ("Cs", "Co", "Cn") or char == "\ufeff":
        return ""
    if category in ("Zl", "Zp"):
        return "\n"
    return " " if category in ("Cc", "Zs") else char


def split_by_area(text: str, boxes: Sequence[Box]) -> list[str]:
    """Words of `text` shared out over `boxes` in order, each box's share in proportion to its area."""
    if len(boxes) <= 1:
        return [text] * len(boxes)
    areas = [max(x2 - x1, 0.0) * max(y2 - y1, 0.0) for x1, y1, x2, y2 in boxes]
    if not sum(areas):
        areas = [1.0] * len(boxes)
    bounds = [sum(areas[: i + 1]) / sum(areas) for i in range(len(areas))]
    tokens = re.findall(r"\S+\s*", text)
    count = sum(len(t) for t in tokens) or 1
    parts: list[list[str]] = [[] for _ in boxes]
    position = 0
    for token in tokens:
        middle = (position + len(token) / 2) / count
        index = next((i for i, bound in enumerate(bounds) if middle <= bound), len(boxes) - 1)
        parts[index].append(token)
        position += len(token)
    return ["".join(part).strip() for part in parts]
