"""Grounding output through the real command: figure crops, annotated pages, layout.pdf and the
searchable PDF. The replay engine feeds recorded raw output (written here) to the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def rotated_figure_pdf(path: Path, rotation: int) -> Path:
    """One A4 page whose figure is red with a green corner (so a turned crop shows), stored
    unrotated and displayed turned by `rotation` degrees."""
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.draw_rect(pymupdf.Rect(100, 150, 300, 300), color=None, fill=(1, 0, 0))
    page.draw_rect(pymupdf.Rect(100, 150, 170, 200), color=None, fill=(0, 0.8, 0))
    page.insert_text((100, 340), "Figure 1: a red square", fontsize=11)
    page.set_rotation(rotation)
    doc.save(path)
    doc.close()
    return path


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_figure_crops_of_rotated_pages(replayed, tmp_path, rotation):
    """The model sees the page as displayed; the crop re-rendered at --figure-dpi must show the
    same region the same way up."""
    pdf = rotated_figure_pdf(tmp_path / "turned.pdf", rotation)
    with pymupdf.open(pdf) as doc:
        page = doc[0]
        shown = page.rect  # the displayed page: width and height swap at 90 and 270
        figure = pymupdf.Rect(110, 160, 290, 290) * page.rotation_matrix  # inside the figure, as displayed
        grid = [round(v * f) for v, f in zip(figure, (999 / shown.width, 999 / shown.height) * 2, strict=True)]
        box = grid_to_points(grid, shown.width, shown.height)
        whole = page.get_pixmap(dpi=300, alpha=False, colorspace=pymupdf.csRGB)
    raw = f"<|ref|>image<|/ref|><|det|>[{grid}]<|/det|>\n"
    folder = replayed(["pdf", "--figure-dpi", "300"], pdf, {1: raw})
    with Image.open(folder / "figures" / "0001-01.png") as crop:
        crop = crop.convert("RGB")
    assert crop.size[0] == pytest.approx(box.width * 300 / 72, abs=3)
    assert crop.size[1] == pytest.approx(box.height * 300 / 72, abs=3)
    # The same region of the displayed page rendered whole: the crop matches it pixel for pixel,
    # up to a pixel's shift at the edges.
    expected = Image.frombytes("RGB", (whole.width, whole.height), whole.samples)
    scale = 300 / 72
    expected = expected.crop([round(v * scale) for v in (box.x0, box.y0, box.x1, box.y1)]).resize(crop.size)
    pixels = np.asarray(crop, dtype=np.int16)
    differing = (np.abs(pixels - np.asarray(expected, dtype=np.int16)).max(axis=2) > 60).mean()
    assert differing < 0.02, f"{differing:.1%} of the pixels differ at {rotation} degrees"
    greens = ((pixels[..., 1] > 150) & (pixels[..., 0] < 100)).mean()
    assert greens > 0.05  # the green corner is inside the crop
