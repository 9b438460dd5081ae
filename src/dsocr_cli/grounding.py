"""Raw DeepSeek-OCR output -> layout blocks and clean markdown. Pure functions, never eval.

The model writes `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` before each block's
text, boxes on a 0..999 grid over the page image. Real generations break that grammar (unclosed or
nested tags, bad numbers, inverted or out-of-range boxes, text cut at the token limit): the parser
keeps every character of text, records each defect as a short string, and never raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from dsocr_cli.types import Block, Box, ParsedPage

GRID = 999
_BLOCK = re.compile(
    r"<\|ref\|>(?P<label>.*?)<\|/ref\|>\s*(?:<\|det\|>(?P<det>.*?)(?:<\|/det\|>|\Z))?",
    re.S,
)
_STRAY_TAG = re.compile(r"<\|/?(?:ref|det|grounding)\|>")
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
_PAYLOAD_LEFTOVER = re.compile(r"[\[\],\s]*")
LATEX_FIXES = ((r"\coloneqq", ":="), (r"\eqqcolon", "=:"))


def parse(raw: str, width: int, height: int) -> ParsedPage:
    """Blocks in reading order with boxes in page-image pixels (`width` x `height`)."""
    blocks: list[Block] = []
    defects: list[str] = []
    matches = list(_BLOCK.finditer(raw))
    lead = raw[: matches[0].start()] if matches else raw
    if lead.strip():
        blocks.append(Block("text", (), _clean_text(lead, defects), 0))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(raw)
        label = _clean_label(match.group("label"), defects)
        det = match.group("det")
        if det is None:
            defects.append(f"block {len(blocks)}: label {label!r} without boxes")
            boxes: tuple[Box, ...] = ()
        else:
            boxes = _parse_boxes(det, width, height, defects, len(blocks))
        text = _clean_text(raw[match.end() : end], defects)
        blocks.append(Block(label, boxes, text, len(blocks)))
    if "<|det|>" in raw and not raw.rstrip().endswith("<|/det|>") and raw.count("<|det|>") > raw.count("<|/det|>"):
        defects.append("unclosed <|det|> (generation cut short?)")
    return ParsedPage(tuple(blocks), tuple(dict.fromkeys(defects)))


def _clean_label(label: str, defects: list[str]) -> str:
    if "<|" in label or "\n" in label:
        defects.append(f"malformed label {label[:40]!r}")
        label = _STRAY_TAG.sub(" ", label).split()[-1] if _STRAY_TAG.sub(" ", label).split() else "text"
    label = label.strip()
    return label or "text"


def _clean_text(text: str, defects: list[str]) -> str:
    if _STRAY_TAG.search(text):
        defects.append("stray grounding tag in text")
        text = _STRAY_TAG.sub("", text)
    for old, new in LATEX_FIXES:
        text = text.replace(old, new)
    return text.strip()


def _parse_boxes(payload: str, width: int, height: int, defects: list[str], index: int) -> tuple[Box, ...]:
    boxes: list[Box] = []
    leftover = _BOX.sub("", payload)
    if _PAYLOAD_LEFTOVER.fullmatch(leftover) is None:
        defects.append(f"block {index}: unparsable box text {payload[:60]!r}")
    for match in _BOX.finditer(payload):
        box = _grid_box([float(v) for v in match.groups()], defects, index)
        if box is not None:
            x1, y1, x2, y2 = box
            boxes.append((x1 / GRID * width, y1 / GRID * height, x2 / GRID * width, y2 / GRID * height))
    return tuple(boxes)


def _grid_box(values: list[float], defects: list[str], index: int) -> Box | None:
    """Clamp to the grid, order the corners, drop empty boxes."""
    clamped = [min(max(v, 0.0), float(GRID)) for v in values]
    if clamped != values:
        defects.append(f"block {index}: box outside the 0..{GRID} grid (clamped)")
    x1, y1, x2, y2 = clamped
    if x1 > x2 or y1 > y2:
        defects.append(f"block {index}: inverted box (corners swapped)")
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        defects.append(f"block {index}: empty box (dropped)")
        return None
    return (x1, y1, x2, y2)


FigureLink = Callable[[Block, int], "str | None"]


def to_markdown(blocks: tuple[Block, ...], figure_link: FigureLink | None = None) -> str:
    """Clean markdown: block texts in order; `image` blocks become links from `figure_link`."""
    parts: list[str] = []
    for block in blocks:
        if block.label == "image":
            for k in range(len(block.boxes)):
                link = figure_link(block, k) if figure_link else None
                if link:
                    parts.append(f"![]({link})")
        if block.text:
            parts.append(block.text)
    return "\n\n".join(parts).strip() + "\n" if parts else ""
