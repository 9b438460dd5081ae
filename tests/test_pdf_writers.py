"""Searchable and layout PDFs on real files made here with PyMuPDF and Pillow, no mocks.

The source PDF is "scanned": each page is an image of words at known positions plus vector
drawings, so every word that text extraction finds in the output comes from the OCR layer.
Page 1 is plain, page 2 has a media box away from (0, 0) and is rotated by 90 degrees, page 3
is never OCRed. Boxes are made as the pipeline makes them: displayed-page points x 2.0 (144 dpi).
"""

from __future__ import annotations

import io
from pathlib import Path

import pymupdf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFont

from dsocr_cli.writers.pdf import PageText, layer_text, layout_pdf, searchable_pdf, split_by_area

SCALE = 2.0
MARGIN = 3.0  # points around the words, as a model's boxes are never tight

# page -> blocks: (label, [words per box], text the model wrote)
PAGE1 = {
    "size": (612, 792),
    "words": [
        ("Quarterly", (72, 90), 24),
        ("report", (200, 90), 24),
        ("alpha", (72, 160), 12),
        ("beta", (110, 160), 12),
        ("gamma", (145, 160), 12),
        ("Total", (72, 260), 12),
        ("forty-two", (140, 260), 12),
        ("leftcol", (72, 400), 12),
        ("rightcol", (340, 400), 12),
    ],
    "blocks": [
        ("title", [["Quarterly", "report"]], "# Quarterly **report**"),
        ("text", [["alpha", "beta", "gamma"]], "alpha *beta* $$gamma$$"),
        ("table", [["Total", "forty-two"]], "<table><tr><td>Total</td><td>forty-two</td></tr></table>"),
        ("text", [["leftcol"], ["rightcol"]], "leftcol rightcol"),
    ],
}
PAGE2 = {
    "size": (400, 300),
    "words": [("sideways", (60, 80), 18), ("words", (60, 200), 18)],
    "blocks": [("text", [["sideways"]], "sideways"), ("sub_title", [["words"]], "## words")],
}
MEDIABOX_ORIGIN = (30, 50)
IMAGE_BOX = (300, 500, 500, 700)  # points on page 1: a figure block, which gets no text


def _word_rects(width: float, height: float, words) -> tuple[dict[str, pymupdf.Rect], pymupdf.Pixmap]:
    """Write the words on a scratch page; their rects and the page's picture at SCALE."""
    doc = pymupdf.open()
    page = doc.new_page(width=width, height=height)
    for word, point, size in words:
        page.insert_text(point, word, fontsize=size)
    rects = {w[4]: pymupdf.Rect(w[:4]) for w in page.get_text("words")}
    return rects, page.get_pixmap(matrix=pymupdf.Matrix(SCALE, SCALE), alpha=False)


def _scanned_page(doc: pymupdf.Document, spec: dict, origin=(0, 0), rotation=0) -> dict[str, pymupdf.Rect]:
    """A page showing a picture of the words (upright on screen) plus drawings; the words' rects.

    `spec["size"]` is the size as displayed; a page rotated by 90 is stored the other way round,
    its picture turned so that it shows upright, as a landscape scan stored as portrait does.
    """
    width, height = spec["size"]
    rects, pix = _word_rects(width, height, spec["words"])
    stored = (height, width) if rotation in (90, 270) else (width, height)
    page = doc.new_page(width=stored[0], height=stored[1])
    if origin != (0, 0):
        page.set_mediabox(pymupdf.Rect(origin[0], origin[1], origin[0] + stored[0], origin[1] + stored[1]))
    page.insert_image(page.rect, pixmap=pix, rotate=rotation)
    page.draw_rect(pymupdf.Rect(20, 20, stored[0] - 20, stored[1] - 20), color=(0.8, 0.1, 0.1), width=2)
    page.draw_circle((stored[0] - 60, 60), 25, color=(0, 0, 1), fill=(0.6, 0.8, 1))
    page.set_rotation(rotation)
    return rects


def _page_text(number: int, spec: dict, shown: dict[str, pymupdf.Rect], page_rect: pymupdf.Rect) -> PageText:
    blocks = []
    for label, groups, text in spec["blocks"]:
        boxes = []
        for words in groups:
            rect = pymupdf.Rect(shown[words[0]])
            for word in words[1:]:
                rect |= shown[word]
            rect = (rect + (-MARGIN, -MARGIN, MARGIN, MARGIN)) & page_rect
            boxes.append(tuple(v * SCALE for v in rect))
        blocks.append((label, tuple(boxes), text))
    return PageText(number, round(page_rect.width * SCALE), round(page_rect.height * SCALE), SCALE, tuple(blocks))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """The 3-page source PDF on disk, the PageTexts of pages 1 and 2, and the expected boxes."""
    doc = pymupdf.open()
    shown1 = _scanned_page(doc, PAGE1)
    shown2 = _scanned_page(doc, PAGE2, origin=MEDIABOX_ORIGIN, rotation=90)
    untouched = doc.new_page(width=300, height=300)
    untouched.draw_line((10, 10), (290, 290), color=(0, 0.5, 0), width=3)
    pages = [
        _page_text(1, PAGE1, shown1, doc[0].rect),
        _page_text(2, PAGE2, shown2, doc[1].rect),
    ]
    image_block = ("image", (tuple(v * SCALE for v in IMAGE_BOX),), "")
    pages[0] = PageText(1, pages[0].width_px, pages[0].height_px, SCALE, pages[0].blocks + (image_block,))
    path = tmp_path_factory.mktemp("pdf") / "scan.pdf"
    doc.save(path, deflate=True)
    out = pymupdf.open("pdf", searchable_pdf(path, "pdf", pages))
    return {"path": path, "pages": pages, "out": out, "doc": pymupdf.open(path)}


def _box_rects(page_text: PageText) -> dict[str, pymupdf.Rect]:
    """Expected word -> its block box in displayed points (the box the word's text was given)."""
    spec = PAGE1 if page_text.number == 1 else PAGE2
    found = {}
    for (_, groups, _), (_, boxes, _) in zip(spec["blocks"], page_text.blocks, strict=False):
        for words, box in zip(groups, boxes, strict=True):
            for word in words:
                found[word] = pymupdf.Rect(*(v / SCALE for v in box))
    return found


def _shown_words(page: pymupdf.Page) -> list[tuple[str, pymupdf.Rect]]:
    """Extracted words with their rects turned into displayed-page points."""
    return [(w[4], pymupdf.Rect(w[:4]) * page.rotation_matrix) for w in page.get_text("words")]


def _mostly_inside(rect: pymupdf.Rect, box: pymupdf.Rect) -> bool:
    return (rect & box).get_area() > 0.5 * rect.get_area()


@pytest.mark.parametrize("number", [1, 2])
def test_each_word_is_extracted_inside_its_block_box(source, number):
    page_text = source["pages"][number - 1]
    page = source["out"][number - 1]
    words = _shown_words(page)
    expected = _box_rects(page_text)
    assert sorted(w for w, _ in words) == sorted(expected)
    for word, rect in words:
        assert _mostly_inside(rect, expected[word]), (word, rect, expected[word])
        assert rect.width > rect.height, f"{word!r} does not read left to right on screen"


def test_search_finds_words_in_their_boxes(source):
    for page_text in source["pages"]:
        page = source["out"][page_text.number - 1]
        for word, box in _box_rects(page_text).items():
            hits = [r * page.rotation_matrix for r in page.search_for(word)]
            assert hits and any(_mostly_inside(hit, box) for hit in hits), word


def test_image_blocks_and_markup_get_no_text(source):
    text = source["out"][0].get_text()
    for junk in ("#", "**", "<td>", "$$", "*beta*"):
        assert junk not in text
    assert source["out"][0].get_text(clip=pymupdf.Rect(IMAGE_BOX)).strip() == ""


def test_original_pages_render_identically(source):
    for before, after in zip(source["doc"], source["out"], strict=True):
        assert after.rotation == before.rotation and after.mediabox == before.mediabox
        assert after.get_pixmap(alpha=False).samples == before.get_pixmap(alpha=False).samples


def test_unprocessed_page_is_left_alone(source):
    before, after = source["doc"][2], source["out"][2]
    assert after.get_text() == ""
    assert after.read_contents() == before.read_contents()


def test_boxes_match_the_rendered_image_on_the_rotated_page(source):
    """The layer's frame is the picture the model saw: ink of each word lies in its pixel box."""
    page = source["doc"][1]
    pix = page.get_pixmap(matrix=pymupdf.Matrix(SCALE, SCALE), alpha=False)
    image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples).convert("L")
    for _, boxes, _ in source["pages"][1].blocks:
        crop = image.crop(tuple(round(v) for v in boxes[0]))
        assert crop.getextrema()[0] < 80  # black text inside the box


@pytest.mark.parametrize("rotation", [180, 270])
def test_other_rotations_keep_words_upright_in_their_boxes(tmp_path, rotation):
    doc = pymupdf.open()
    shown = _scanned_page(doc, PAGE2, origin=(-20, 70), rotation=rotation)
    page_text = _page_text(1, PAGE2, shown, doc[0].rect)
    path = tmp_path / "turned.pdf"
    doc.save(path, deflate=True)
    out = pymupdf.open("pdf", searchable_pdf(path, "pdf", [page_text]))
    boxes = {text.strip("# "): pymupdf.Rect(*(v / SCALE for v in b[0])) for _, b, text in page_text.blocks}
    found = _shown_words(out[0])
    assert sorted(w for w, _ in found) == ["sideways", "words"]
    assert all(_mostly_inside(rect, boxes[w]) and rect.width > rect.height for w, rect in found)


def test_layer_is_not_moved_by_a_dangling_transform(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=300)
    page.draw_rect(pymupdf.Rect(10, 10, 50, 50), fill=(0, 0, 0))
    doc.update_stream(page.get_contents()[0], b"0.5 0 0 0.5 0 0 cm\n0 0 0 rg 20 20 40 40 re f\n")
    path = tmp_path / "cm.pdf"
    doc.save(path)
    box = (100.0, 100.0, 250.0, 140.0)
    out = pymupdf.open("pdf", searchable_pdf(path, "pdf", [PageText(1, 300, 300, 1.0, (("text", (box,), "steady"),))]))
    (word, rect), *_ = _shown_words(out[0])
    assert word == "steady" and _mostly_inside(rect, pymupdf.Rect(box))
    assert out[0].get_pixmap().samples == pymupdf.open(path)[0].get_pixmap().samples


def test_long_paragraphs_wrap_inside_the_box_and_narrow_boxes_keep_words_whole(source):
    words = [f"word{i:03d}" for i in range(120)]
    paragraph = ("text", ((100.0, 600.0, 700.0, 900.0),), " ".join(words))
    column = ("text", ((1000.0, 100.0, 1040.0, 1200.0),), "Supercalifragilistic vertical")
    page = PageText(1, 1224, 1584, SCALE, (paragraph, column))
    out = pymupdf.open("pdf", searchable_pdf(source["path"], "pdf", [page]))
    found = _shown_words(out[0])
    assert [w for w, _ in found if w.startswith("word")] == words
    box = pymupdf.Rect(50, 300, 350, 450)
    assert all(_mostly_inside(rect, box) for w, rect in found if w.startswith("word"))
    lines = {round(rect.y0) for w, rect in found if w.startswith("word")}
    assert len(lines) > 5  # wrapped into many lines, filling the box's height
    assert out[0].search_for("Supercalifragilistic")  # narrow box: a smaller font, not a cut word


def test_page_text_from_a_pipeline_result(tmp_path):
    from dsocr_cli.types import Block, PageImage, PageResult, ParsedPage, Prediction, Source

    image = Image.new("RGB", (1224, 1584), "white")
    page = PageImage(Source(tmp_path / "a.pdf", "pdf", "a"), 4, image, dpi=144.0, scale=SCALE)
    blocks = (Block("title", ((1.0, 2.0, 30.0, 40.0),), "# Hi", 0), Block("image", (), "", 1))
    result = PageResult(page, Prediction("raw", 3, "eos", 0.1), ParsedPage(blocks))
    assert PageText.from_result(result) == PageText(
        5, 1224, 1584, SCALE, (("title", ((1.0, 2.0, 30.0, 40.0),), "# Hi"), ("image", (), ""))
    )


def test_encrypted_source_stays_encrypted(tmp_path):
    doc = pymupdf.open()
    doc.new_page().draw_rect(pymupdf.Rect(10, 10, 100, 100), fill=(1, 0, 0))
    path = tmp_path / "locked.pdf"
    doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="user", owner_pw="owner")
    page_text = PageText(1, 612, 792, 1.0, (("text", ((100.0, 100.0, 300.0, 150.0),), "secret words"),))
    with pytest.raises(ValueError, match="password"):
        searchable_pdf(path, "pdf", [page_text])
    out = pymupdf.open("pdf", searchable_pdf(path, "pdf", [page_text], password="user"))
    assert out.needs_pass and out.authenticate("user")
    assert out[0].search_for("secret")


def _font_files(doc: pymupdf.Document) -> list[bytes]:
    """The font programs of a document (FontFile, FontFile2, FontFile3 streams, decoded)."""
    files = []
    for xref in range(1, doc.xref_length()):
        if doc.xref_get_key(xref, "Type") != ("name", "/FontDescriptor"):
            continue
        for key in ("FontFile", "FontFile2", "FontFile3"):
            kind, value = doc.xref_get_key(xref, key)
            if kind == "xref":
                files.append(doc.xref_stream(int(value.split()[0])))
    return files


def test_born_digital_fonts_stay_byte_for_byte(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=200)
    writer = pymupdf.TextWriter(page.rect)
    writer.append((20, 50), "Printed text", font=pymupdf.Font("tiro"), fontsize=14)
    writer.write_text(page)
    path = tmp_path / "born.pdf"
    doc.save(path)
    fonts = _font_files(doc)
    assert fonts
    page_text = PageText(1, 300, 200, 1.0, (("text", ((20.0, 80.0, 280.0, 120.0),), "漢字 layer"),))
    out = pymupdf.open("pdf", searchable_pdf(path, "pdf", [page_text]))
    assert set(fonts) <= set(_font_files(out))
    assert "漢字" in out[0].get_text() and "Printed text" in out[0].get_text()


def _word_image(words: list[tuple[str, tuple[int, int]]], size=(640, 420)) -> tuple[Image.Image, list]:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=32)
    boxes = []
    for word, xy in words:
        draw.text(xy, word, fill="black", font=font)
        x1, y1, x2, y2 = draw.textbbox(xy, word, font=font)
        boxes.append((word, (x1 - 4.0, y1 - 4.0, x2 + 4.0, y2 + 4.0)))
    return image, boxes


def test_image_source_gives_one_searchable_page_per_image(tmp_path):
    first, boxes1 = _word_image([("Harbour", (40, 40)), ("lighthouse", (200, 300))])
    second, boxes2 = _word_image([("meadow", (300, 100))], size=(500, 700))
    pages = [
        PageText(n, im.width, im.height, 1.0, tuple(("text", (box,), w) for w, box in boxes))
        for n, im, boxes in ((1, first, boxes1), (2, second, boxes2))
    ]
    out = pymupdf.open("pdf", searchable_pdf(None, "image", pages, {1: first, 2: second}))
    assert out.page_count == 2
    for page, image, boxes in ((out[0], first, boxes1), (out[1], second, boxes2)):
        assert page.rect == pymupdf.Rect(0, 0, image.width, image.height)  # 1 px = 1 pt
        assert len(page.get_images()) == 1
        for word, box in boxes:
            hits = page.search_for(word)
            assert hits and _mostly_inside(hits[0], pymupdf.Rect(box)), word


def test_image_source_read_from_disk_when_no_image_is_given(tmp_path):
    image, boxes = _word_image([("Orchard", (60, 60))])
    path = tmp_path / "scan.png"
    image.save(path)
    page_text = PageText(1, image.width, image.height, 1.0, tuple(("text", (b,), w) for w, b in boxes))
    out = pymupdf.open("pdf", searchable_pdf(path, "image", [page_text]))
    assert out.page_count == 1 and out[0].search_for("Orchard")


def test_layout_pdf_one_page_per_image_with_its_aspect():
    images = [Image.new("RGB", size, colour) for size, colour in (((1224, 1584), "red"), ((800, 300), "blue"))]
    out = pymupdf.open("pdf", layout_pdf(images))
    assert out.page_count == 2
    assert out[0].rect == pymupdf.Rect(0, 0, 612, 792)  # a 144 dpi render of Letter -> Letter
    for page, image in zip(out, images, strict=True):
        assert page.rect.width / page.rect.height == pytest.approx(image.width / image.height, rel=1e-3)
        xref = page.get_images()[0][0]
        assert out.extract_image(xref)["ext"] == "jpeg"
    with pytest.raises(ValueError):
        layout_pdf([])


def test_layer_text_strips_markup_and_keeps_words():
    markdown = (
        "## Heading **bold** and *soft* snake_case_name\n"
        "<table><tr><td>cell&amp;one</td><td>two</td></tr></table>\n"
        "| a | b |\n|---|---|\n"
        "$$E = mc^2$$ inline \\(x\\) ![figure](f.png) [link text](http://example.com)\x00 end"
    )
    assert layer_text(markdown) == (
        "Heading bold and soft snake_case_name\ncell&one two\na b\nE = mc^2 inline x figure link text end"
    )


def test_split_by_area_follows_box_areas():
    small, large = (0.0, 0.0, 10.0, 10.0), (0.0, 0.0, 10.0, 30.0)
    assert split_by_area("one two three four five six seven eight", [small, large]) == [
        "one two",
        "three four five six seven eight",
    ]
    assert split_by_area("solo", [small]) == ["solo"]
    assert split_by_area("", [small, large]) == ["", ""]


JUNK = st.sampled_from(
    [
        "",
        " ",
        "<td></td>" * 50,
        "$$\\frac{a}{b}$$",
        "**",
        "# " * 30,
        "\x00\x01\ud800\uffff",
        "漢字かなカナ",
        "مرحبا بالعالم",
        "🙂👍🏽",
        "x" * 3000,
        "word " * 800,
        "<|ref|>text<|/ref|>",
        "\\[ \\int_0^1 \\]",
    ]
)
BOX = st.tuples(st.floats(-50, 1300), st.floats(-50, 1700), st.floats(0.1, 900), st.floats(0.1, 900)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
)
BLOCK = st.tuples(
    st.sampled_from(["text", "title", "table", "image", "equation"]),
    st.lists(BOX, min_size=0, max_size=3).map(tuple),
    st.one_of(JUNK, st.text(max_size=300)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(BLOCK, max_size=5))
def test_any_block_text_gives_a_pdf_that_reopens(source, blocks):
    page = PageText(1, 1224, 1584, SCALE, tuple(blocks))
    out = pymupdf.open("pdf", searchable_pdf(source["path"], "pdf", [page]))
    assert out.page_count == 3
    out[0].get_text("words")
    image_out = pymupdf.open(
        "pdf",
        searchable_pdf(
            None, "image", [PageText(1, 60, 40, 1.0, tuple(blocks))], {1: Image.new("RGB", (60, 40), "white")}
        ),
    )
    assert image_out.page_count == 1


def test_bytes_are_a_pdf_without_the_source_file(source):
    data = searchable_pdf(source["path"], "pdf", source["pages"][:1])
    assert data.startswith(b"%PDF-") and pymupdf.open(stream=io.BytesIO(data)).page_count == 3
    assert isinstance(source["path"], Path)
