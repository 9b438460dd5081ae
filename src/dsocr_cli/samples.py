"""Small real documents made on the spot: the sample page, selftest inputs and test fixtures."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

PARAGRAPH = (
    "DeepSeek-OCR reads a page image and writes markdown with a layout box before each block. "
    "dsocr renders PDFs page by page, batches the pages through the model and writes the text, "
    "figure crops, annotated pages and a JSON record for every document."
)


def make_pdf(path: Path, pages: int = 2, sizes: list[tuple[float, float]] | None = None) -> Path:
    """A PDF with a title, a paragraph, a small table and a drawn figure on each page."""
    import pymupdf

    doc = pymupdf.open()
    for n in range(pages):
        width, height = sizes[n % len(sizes)] if sizes else (595, 842)
        page = doc.new_page(width=width, height=height)
        page.insert_text((56, 72), f"Sample document, page {n + 1}", fontsize=20)
        page.insert_textbox(pymupdf.Rect(56, 96, width - 56, 220), PARAGRAPH, fontsize=11)
        for row in range(3):
            for col in range(3):
                cell = pymupdf.Rect(56 + col * 90, 240 + row * 22, 146 + col * 90, 262 + row * 22)
                page.draw_rect(cell, color=(0, 0, 0), width=0.6)
                page.insert_text((cell.x0 + 6, cell.y1 - 7), f"r{row}c{col}", fontsize=9)
        page.draw_circle((width / 2, 420), 60, color=(0.1, 0.3, 0.8), fill=(0.6, 0.8, 1.0))
        page.insert_text((width / 2 - 40, 500), "Figure 1: a circle", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path, garbage=3, deflate=True)
    doc.close()
    return path


def make_image(path: Path, size: tuple[int, int] = (900, 600), mode: str = "RGB", text: str = "Hello dsocr") -> Path:
    """A page-like image with some text and a box, saved in the format its suffix names."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((40, 40), text, fill="black")
    draw.rectangle((40, 100, size[0] - 40, size[1] - 40), outline="black", width=3)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
