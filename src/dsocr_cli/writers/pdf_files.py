"""A document's layout.pdf and searchable.pdf, written into its staging folder by the writers'
process pool (writers/images.py `Painter`): fitting the text layer and re-encoding the annotated
pages cost about as much CPU as everything else the main process does for a page.

Module-level functions of plain values, so a spawned process can run them.
"""

from __future__ import annotations

from pathlib import Path

from dsocr_cli.types import SourceKind
from dsocr_cli.writers import pdf
from dsocr_cli.writers.files import write_bytes

LAYOUT_NAME = "layout.pdf"
SEARCHABLE_NAME = "searchable.pdf"


def write_layout_pdf(staging: Path, annotated: list[str], dpi: float) -> None:
    """layout.pdf from the annotated page JPEGs already written under `staging`, in page order."""
    from PIL import Image

    images = []
    for name in annotated:
        with Image.open(staging / name) as image:
            images.append(image.copy())
    write_bytes(staging / LAYOUT_NAME, pdf.layout_pdf(images, dpi=dpi))


def write_searchable_pdf(
    staging: Path, source_path: Path, kind: SourceKind, pages: list[pdf.PageText], password: str | None
) -> None:
    """searchable.pdf: the input with the pages' text as an invisible layer."""
    write_bytes(staging / SEARCHABLE_NAME, pdf.searchable_pdf(source_path, kind, pages, password=password))
