"""The grounding parser: golden outputs of the kinds real generations contain, and properties
that must hold for any text at all (it never raises and never evaluates anything)."""

from __future__ import annotations

import builtins

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsocr_cli.grounding import GRID, parse, to_markdown

PAGE = """<|ref|>title<|/ref|><|det|>[[94, 60, 620, 95]]<|/det|>
# Annual report

<|ref|>text<|/ref|><|det|>[[94, 114, 905, 261]]<|/det|>
Revenue grew in every region.

<|ref|>table<|/ref|><|det|>[[94, 280, 560, 360]]<|/det|>
<table><tr><td>2025</td><td>12.5</td></tr><tr><td>2026</td><td>14.1</td></tr></table>

<|ref|>image<|/ref|><|det|>[[399, 427, 600, 570], [100, 600, 300, 700]]<|/det|>

<|ref|>image_caption<|/ref|><|det|>[[400, 585, 600, 600]]<|/det|>
Figure 1: growth

<|ref|>equation<|/ref|><|det|>[[100, 740, 500, 780]]<|/det|>
\\[ r \\coloneqq \\frac{a}{b}, \\quad b \\eqqcolon c \\]
"""


def test_golden_page():
    parsed = parse(PAGE, 999, 1998)
    assert [b.label for b in parsed.blocks] == ["title", "text", "table", "image", "image_caption", "equation"]
    assert parsed.defects == ()
    title, _, table, image, _, equation = parsed.blocks
    assert title.text == "# Annual report"
    assert title.boxes == ((94.0, 120.0, 620.0, 190.0),)  # y scaled by height / 999
    assert table.text.startswith("<table><tr><td>2025</td>")
    assert len(image.boxes) == 2 and image.text == ""
    assert equation.text == "\\[ r := \\frac{a}{b}, \\quad b =: c \\]"
    markdown = to_markdown(parsed.blocks, lambda block, k: f"figures/{block.order}-{k}.png")
    assert "![](figures/3-0.png)\n\n![](figures/3-1.png)" in markdown
    assert "<|" not in markdown and "[[" not in markdown
    assert markdown.index("# Annual report") < markdown.index("Revenue") < markdown.index("Figure 1")


def test_truncated_generation_keeps_text_and_reports():
    raw = PAGE + "<|ref|>text<|/ref|><|det|>[[100, 800, 9"
    parsed = parse(raw, 1000, 1000)
    assert parsed.blocks[-1].label == "text" and parsed.blocks[-1].boxes == ()
    assert any("unclosed" in d for d in parsed.defects)
    assert parsed.blocks[1].text == "Revenue grew in every region."


@pytest.mark.parametrize(
    ("raw", "defect"),
    [
        ("<|ref|>text<|/ref|><|det|>[[500, 10, 100, 90]]<|/det|>hi", "inverted"),
        ("<|ref|>text<|/ref|><|det|>[[-5, 10, 1200, 90]]<|/det|>hi", "outside"),
        ("<|ref|>text<|/ref|><|det|>[[5, 10, 5, 90]]<|/det|>hi", "empty box"),
        ("<|ref|>text<|/ref|><|det|>[[1, 2, three, 4]]<|/det|>hi", "unparsable"),
        ("<|ref|>text<|/ref|>hi", "without boxes"),
        ("<|ref|>ti<|ref|>tle<|/ref|><|det|>[[1, 2, 30, 40]]<|/det|>hi", "malformed label"),
        ("plain <|det|> stray", "stray"),
    ],
)
def test_defects_are_reported_not_raised(raw, defect):
    parsed = parse(raw, 100, 100)
    assert any(defect in d for d in parsed.defects), parsed.defects
    assert "hi" in to_markdown(parsed.blocks) or "stray" in to_markdown(parsed.blocks)


def test_boxes_are_clamped_and_ordered():
    (block,) = parse("<|ref|>text<|/ref|><|det|>[[900, 80, -20, 1500]]<|/det|>x", 999, 999).blocks
    ((x1, y1, x2, y2),) = block.boxes
    assert (x1, y1, x2, y2) == (0.0, 80.0, 900.0, float(GRID))


def test_untagged_output_is_one_text_block():
    text = "Just text, as the free OCR prompt gives."
    assert [(b.label, b.boxes, b.text) for b in parse(text, 10, 10).blocks] == [("text", (), text)]


def test_code_in_a_box_payload_is_never_run(monkeypatch):
    calls = []
    monkeypatch.setattr(builtins, "__import__", lambda *a, **k: calls.append(a) or __import__(*a, **k))
    raw = "<|ref|>text<|/ref|><|det|>[[__import__('os').system('touch /tmp/pwned')]]<|/det|>body"
    parsed = parse(raw, 100, 100)
    assert calls == []
    assert parsed.blocks[0].boxes == () and parsed.blocks[0].text == "body"


TAGS = st.sampled_from(["<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "[[", "]]", ", ", "\n"])
PIECES = st.one_of(TAGS, st.text(max_size=12), st.integers(-2000, 3000).map(str))


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=40).map("".join), st.integers(1, 5000), st.integers(1, 5000))
def test_parser_never_raises_and_boxes_stay_on_the_page(raw, width, height):
    parsed = parse(raw, width, height)
    for block in parsed.blocks:
        for x1, y1, x2, y2 in block.boxes:
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert "<|ref|>" not in block.text and "<|det|>" not in block.text
    to_markdown(parsed.blocks, lambda b, k: "x.png")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_round_trips_without_tags(text):
    parsed = parse(text, 100, 100)
    words = [w for w in text.replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:").split() if "<|" not in w]
    markdown = to_markdown(parsed.blocks)
    for word in words:
        if "|>" not in word:
            assert word in markdown
