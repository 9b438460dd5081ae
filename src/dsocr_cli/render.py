"""Source -> PageImages. The only code that opens inputs: PDFs through PyMuPDF, images through Pillow.

Every failure becomes an InputError naming the file and the cause; nothing here writes output.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from dsocr_cli.errors import InputError, show_path
from dsocr_cli.options import RenderOptions
from dsocr_cli.types import PageImage, Source

# Pillow only warns between MAX_IMAGE_PIXELS and twice that; dsocr refuses both.
Image.MAX_IMAGE_PIXELS = 180_000_000


def render(source: Source, options: RenderOptions) -> Iterator[PageImage]:
    """Yield the selected pages of one document, RGB, in page order."""
    if source.kind == "pdf":
        yield from _render_pdf(source, options)
    else:
        yield from _render_image(source, options)


def page_count(source: Source, options: RenderOptions) -> int:
    """How many pages `render` will yield, from the PDF's page tree or the TIFF's frame count,
    nothing rendered: the progress bar's total. 0 when the file cannot be opened (rendering says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            total = _pdf_page_count(source, options) if source.kind == "pdf" else _frame_count(source)
    except Exception:  # a broken input fails at rendering, with the cause
        return 0
    return sum(1 for number in range(1, total + 1) if options.wants(number))


def _pdf_page_count(source: Source, options: RenderOptions) -> int:
    import pymupdf

    with pymupdf.open(source.path, filetype="pdf") as doc:
        if doc.needs_pass and not (options.password and doc.authenticate(options.password)):
            return 0
        return doc.page_count


def _frame_count(source: Source) -> int:
    with Image.open(source.path) as image:
        return getattr(image, "n_frames", 1) if image.format == "TIFF" else 1


def _render_pdf(source: Source, options: RenderOptions) -> Iterator[PageImage]:
    import pymupdf

    name = show_path(source.path)
    try:
        doc = pymupdf.open(source.path, filetype="pdf")
    except Exception as exc:  # MuPDF raises its own FileDataError and friends
        raise InputError(f"{name}: not a readable PDF ({_first_line(exc)})", "corrupt") from None
    with doc:
        if doc.needs_pass and not (options.password and doc.authenticate(options.password)):
            why = "wrong password" if options.password else "encrypted with a user password"
            raise InputError(f"{name}: {why}", "encrypted", "pass it with --password")
        if doc.page_count == 0:
            raise InputError(f"{name}: the PDF has no pages", "empty")
        if doc.is_repaired:
            raise InputError(f"{name}: the PDF is damaged (MuPDF had to repair it)", "corrupt")
        numbers = [n for n in range(1, doc.page_count + 1) if options.wants(n)]
        if not numbers:
            raise InputError(f"{name}: --pages selects none of its {doc.page_count} pages", "empty")
        for number in numbers:
            yield _render_pdf_page(source, doc, number, options)


def _render_pdf_page(source: Source, doc, number: int, options: RenderOptions) -> PageImage:
    import pymupdf

    try:
        page = doc.load_page(number - 1)
        zoom = _zoom_within_budget(page.rect.width, page.rect.height, options)
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    except Exception as exc:
        raise InputError(
            f"{show_path(source.path)}: page {number} cannot be rendered ({_first_line(exc)})", "corrupt"
        ) from None
    return PageImage(source, number - 1, image, dpi=72.0 * zoom, scale=zoom)


def render_region(
    source: Source, index: int, rect_pt: tuple[float, float, float, float], dpi: float, password: str | None = None
) -> Image.Image:
    """A region of a PDF page (in points of the displayed page) re-rendered at `dpi`: sharp figure crops."""
    import pymupdf

    with pymupdf.open(source.path, filetype="pdf") as doc:
        if doc.needs_pass:
            doc.authenticate(password or "")
        page = doc.load_page(index)
        clip = pymupdf.Rect(rect_pt)  # get_pixmap clips in displayed coordinates, as the model saw the page
        zoom = dpi / 72.0
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), clip=clip, alpha=False, colorspace=pymupdf.csRGB)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)


def _zoom_within_budget(width_pt: float, height_pt: float, options: RenderOptions) -> float:
    """Points -> pixels factor for the asked DPI, lowered so the pixmap stays under the pixel budget."""
    zoom = options.dpi / 72.0
    pixels = width_pt * height_pt * zoom * zoom
    if pixels > options.max_pixels:
        zoom *= math.sqrt(options.max_pixels / pixels)
    return zoom


def _render_image(source: Source, options: RenderOptions) -> Iterator[PageImage]:
    name = show_path(source.path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source.path)
            frames = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1
            wanted = [i for i in range(frames) if options.wants(i + 1)]
            pages = [(i, _frame(image, i)) for i in wanted]  # only the selected frames are decoded
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{name}: image too large (over {Image.MAX_IMAGE_PIXELS:,} pixels)", "too-large") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image Pillow can read", "unsupported") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{name}: broken image ({_first_line(exc)})", "corrupt") from None
    if not pages:
        raise InputError(f"{name}: --pages selects none of its {frames} frames", "empty")
    for index, page in pages:
        yield PageImage(source, index, page, dpi=None, scale=1.0)


MIN_SIDE = 32  # narrower images are padded: the processor cannot tell a 3-pixel-wide image's channels


def _frame(image: Image.Image, index: int) -> Image.Image:
    image.seek(index)
    image.load()  # decode now, so truncation is found here and not mid-batch
    page = to_rgb(ImageOps.exif_transpose(image))
    if min(page.size) < MIN_SIDE:
        canvas = Image.new("RGB", (max(page.width, MIN_SIDE), max(page.height, MIN_SIDE)), "white")
        canvas.paste(page, (0, 0))
        page = canvas
    return page


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: transparency composed on white, 16-bit scaled, CMYK and palettes converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def fingerprint(path) -> dict:
    """Size, modification time and SHA-256 of an input: what resume compares."""
    import hashlib
    import os

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    st = os.stat(path)
    return {"bytes": st.st_size, "mtime": st.st_mtime, "sha256": digest.hexdigest()}
