"""Grounding output through the real command: figure crops, annotated pages, layout.pdf and the
searchable PDF. The replay engine feeds recorded raw output (written here) to the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from dsocr_cli.samples import make_image, make_pdf

# Grid boxes on an A4 page (595 x 842 pt) made by samples.make_pdf: title, paragraph, circle.
RAW = """<|ref|>title<|/ref|><|det|>[[94, 60, 620, 95]]<|/det|>
# Sample document

<|ref|>text<|/ref|><|det|>[[94, 114, 905, 261]]<|/det|>
Zanzibar quokka marmalade

<|ref|>image<|/ref|><|det|>[[399, 427, 600, 570]]<|/det|>

<|ref|>image_caption<|/ref|><|det|>[[380, 585, 620, 600]]<|/det|>
Figure 1: a circle
"""


def record(out: Path, key: str, pages: dict[int, str]) -> Path:
    """Lay out raw outputs as an earlier run would have written them."""
    for number, raw in pages.items():
        path = out / key / "pages" / f"{number:04d}.raw.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(raw, encoding="utf-8")
    return out


def grid_to_points(box, width_pt, height_pt):
    x1, y1, x2, y2 = box
    return pymupdf.Rect(x1 / 999 * width_pt, y1 / 999 * height_pt, x2 / 999 * width_pt, y2 / 999 * height_pt)


@pytest.fixture
def replayed(tmp_path):
    def run(dsocr_args, source: Path, pages: dict[int, str]):
        from conftest import run_dsocr

        recorded = record(tmp_path / "recorded", source.name, pages)
        out = tmp_path / "out"
        result = run_dsocr(*dsocr_args, str(source), "-o", str(out), "--engine", "replay", "--model", str(recorded))
        assert result.returncode == 0, result.stderr
        return out / source.name

    return run


def test_pdf_blocks_crops_and_annotations(replayed, tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", pages=2)
    folder = replayed(["pdf", "--figure-dpi", "300"], pdf, {1: RAW, 2: RAW})
    doc = json.loads((folder / "document.json").read_text())
    blocks = doc["pages"][0]["blocks"]
    assert [b["label"] for b in blocks] == ["title", "text", "image", "image_caption"]
    title_pt = blocks[0]["boxes_pt"][0]
    expected = grid_to_points([94, 60, 620, 95], 595, 842)
    assert title_pt == pytest.approx([expected.x0, expected.y0, expected.x1, expected.y1], abs=0.01)
    assert blocks[2]["figures"] == ["figures/0001-01.png"]
    # The crop is re-rendered at 300 DPI: its pixel size follows the box in points.
    figure = grid_to_points([399, 427, 600, 570], 595, 842)
    with Image.open(folder / "figures" / "0001-01.png") as crop:
        assert crop.size[0] == pytest.approx(figure.width * 300 / 72, abs=2)
        assert crop.size[1] == pytest.approx(figure.height * 300 / 72, abs=2)
        assert crop.getpixel((crop.size[0] // 2, crop.size[1] // 2))[2] > 200  # the circle's light blue
    markdown = (folder / "document.md").read_text()
    assert "![](figures/0001-01.png)" in markdown and "![](figures/0002-01.png)" in markdown
    assert "Zanzibar quokka" in markdown and "<|ref|>" not in markdown
    assert "![](../figures/0001-01.png)" in (folder / "pages" / "0001.md").read_text()
    with Image.open(folder / "pages" / "0001.jpg") as annotated:
        x = int((94 + 905) / 2 / 999 * annotated.size[0])
        y = int(114 / 999 * annotated.size[1])
        r, g, b = annotated.getpixel((x, y))
        assert b > r and b > g  # the text block's blue outline


def test_searchable_and_layout_pdf(replayed, tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf", pages=2)
    folder = replayed(["pdf", "--searchable-pdf", "--layout-pdf"], pdf, {1: RAW, 2: RAW})
    with pymupdf.open(folder / "searchable.pdf") as doc, pymupdf.open(pdf) as original:
        assert doc.page_count == 2
        box = grid_to_points([94, 114, 905, 261], 595, 842)
        for page, before in zip(doc, original, strict=True):
            words = {w[4]: pymupdf.Rect(w[:4]) for w in page.get_text("words")}
            assert "quokka" in words and "Zanzibar" in words
            assert box.contains(words["quokka"]) or box.intersects(words["quokka"])
            assert page.get_pixmap(dpi=50).samples == before.get_pixmap(dpi=50).samples  # invisible layer
    with pymupdf.open(folder / "layout.pdf") as layout:
        assert layout.page_count == 2
        assert layout[0].rect.width == pytest.approx(595, abs=1)


def test_image_input_searchable_pdf(replayed, tmp_path):
    image = make_image(tmp_path / "scan.png", size=(1000, 800))
    raw = "<|ref|>text<|/ref|><|det|>[[40, 50, 500, 120]]<|/det|>\nWombat ledger\n"
    folder = replayed(["image", "--searchable-pdf"], image, {1: raw})
    with pymupdf.open(folder / "searchable.pdf") as doc:
        assert doc.page_count == 1
        hits = doc[0].search_for("Wombat")
        assert hits and hits[0].x0 >= 40 / 999 * 1000 - 1


def test_flags_that_write_files_need_an_output_folder(dsocr, tmp_path):
    result = dsocr("pdf", str(make_pdf(tmp_path / "a.pdf", pages=1)), "--searchable-pdf")
    assert result.returncode == 2 and "-o OUT" in result.stderr


def test_a_one_unit_figure_box_still_gives_a_crop(replayed, tmp_path):
    image = make_image(tmp_path / "scan.png", size=(400, 300))
    raw = "<|ref|>image<|/ref|><|det|>[[100, 100, 101, 300]]<|/det|>\n"
    folder = replayed(["image"], image, {1: raw})
    with Image.open(folder / "figures" / "0001-01.png") as crop:
        assert crop.size[0] >= 1 and crop.size[1] > 50
