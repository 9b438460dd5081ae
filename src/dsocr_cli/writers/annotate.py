"""Page images with the detected layout boxes drawn: one colour per label, the label written on it."""

from __future__ import annotations

import hashlib
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from dsocr_cli.types import Block

PALETTE = {
    "title": (214, 39, 40),
    "sub_title": (255, 127, 14),
    "text": (31, 119, 180),
    "image": (44, 160, 44),
    "image_caption": (23, 190, 207),
    "table": (148, 103, 189),
    "table_caption": (140, 86, 75),
    "equation": (227, 119, 194),
    "formula": (227, 119, 194),
}


def label_colour(label: str) -> tuple[int, int, int]:
    """The palette's colour, else one derived from the label's name (md5, not `hash`), so any label keeps
    one colour across pages and runs."""
    if label in PALETTE:
        return PALETTE[label]
    digest = hashlib.md5(label.encode("utf-8")).digest()
    return (digest[0] % 200, digest[1] % 200, digest[2] % 200)


@lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def annotate(image: Image.Image, blocks: tuple[Block, ...]) -> Image.Image:
    """A copy of the page with each block's boxes outlined and labelled."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas, "RGBA")
    width = max(2, round(max(canvas.size) / 500))
    font = _font(max(12, round(max(canvas.size) / 80)))
    for block in blocks:
        colour = label_colour(block.label)
        for x1, y1, x2, y2 in block.boxes:
            draw.rectangle((x1, y1, x2, y2), outline=colour + (255,), fill=colour + (28,), width=width)
            caption = f"{block.order}:{block.label}"
            left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
            lift = bottom - top + 2 * width
            ty = y1 - lift if y1 - lift >= 0 else y1
            draw.rectangle((x1, ty, x1 + right - left + 2 * width, ty + lift), fill=colour + (220,))
            draw.text((x1 + width, ty + width - (top - y1)), caption, fill=(255, 255, 255), font=font)
    return canvas
