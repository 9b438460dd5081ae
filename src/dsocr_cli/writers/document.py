"""One document's JSON record (schema `dsocr.document/1`) and joined markdown. Pure: values in, values out."""

from __future__ import annotations

from dsocr_cli.errors import show_path
from dsocr_cli.types import Block, PageResult, Source

DOCUMENT_SCHEMA = "dsocr.document/1"
PAGE_SEPARATOR = "\n\n<!-- dsocr:page {number} -->\n\n"


def join_pages(pages: list[tuple[int, str]]) -> str:
    """Pages' markdown in order, each introduced by an HTML comment naming its 1-based number."""
    out = []
    for number, markdown in pages:
        out.append(
            PAGE_SEPARATOR.format(number=number).lstrip("\n") if not out else PAGE_SEPARATOR.format(number=number)
        )
        out.append(markdown.strip("\n"))
    return "".join(out).strip("\n") + "\n"


def _round_box(box) -> list[float]:
    return [round(v, 2) for v in box]


def block_record(block: Block, scale: float, is_pdf: bool, figures: list[str]) -> dict:
    """One block for document.json; a PDF's boxes are also given in PDF points, for tools working on
    the PDF itself."""
    record = {
        "order": block.order,
        "label": block.label,
        "text": block.text,
        "boxes_px": [_round_box(b) for b in block.boxes],
    }
    if is_pdf:
        record["boxes_pt"] = [_round_box([v / scale for v in b]) for b in block.boxes]
    if figures:
        record["figures"] = figures
    return record


def page_record(result: PageResult, files: dict[str, str], figures: dict[int, list[str]]) -> dict:
    """One page for document.json. `files` and `figures` are relative to the document's folder, so a
    tree stays valid when it is moved."""
    page, pred = result.page, result.prediction
    is_pdf = page.source.kind == "pdf"
    width, height = page.size
    return {
        "number": page.number,
        "width_px": width,
        "height_px": height,
        "dpi": round(page.dpi, 3) if page.dpi else None,
        "scale": page.scale,
        "finish": pred.finish,
        "tokens": pred.tokens,
        "attempts": pred.attempts,
        "seconds": round(pred.seconds, 4),
        "files": files,
        "defects": list(result.parsed.defects),
        "blocks": [block_record(b, page.scale, is_pdf, figures.get(b.order, [])) for b in result.parsed.blocks],
    }


def document_record(source: Source, fingerprint: dict, settings: dict, pages: list[dict], seconds: float) -> dict:
    """document.json. Its source fingerprint and settings are what resume compares: a changed input
    or setting redoes the document."""
    return {
        "schema": DOCUMENT_SCHEMA,
        "source": {"path": show_path(source.path), "kind": source.kind, "key": source.key, **fingerprint},
        "settings": settings,
        "page_count": len(pages),
        "seconds": round(seconds, 3),
        "pages": pages,
    }
