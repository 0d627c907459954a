"""Draw face boxes labelled with their expression onto a copy of the photo (Pillow ImageDraw)."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# One colour per FER2013 expression; other labels cycle through the same palette.
_PALETTE = {
    "angry": (230, 57, 70), "disgust": (106, 153, 78), "fear": (155, 93, 229),
    "happy": (255, 183, 3), "sad": (33, 118, 174), "surprise": (251, 133, 0),
    "neutral": (200, 200, 200),
}
_OTHER = list(_PALETTE.values())
FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}


@dataclass(frozen=True)
class Label:
    """One box to draw: ``(x, y, width, height)`` in image pixels and its caption."""

    box: tuple[int, int, int, int]
    expression: str
    score: float


def _colour(expression: str) -> tuple[int, int, int]:
    return _PALETTE.get(expression, _OTHER[sum(map(ord, expression)) % len(_OTHER)])


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 without FreeType sizes
        return ImageFont.load_default()


def annotate(image: Image.Image, labels: list[Label]) -> Image.Image:
    """A copy of ``image`` (RGB, same size) with each box drawn and captioned.

    Line width and text size follow the image size, so captions stay readable on large photos
    and do not swamp small ones.
    """
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    line = max(1, round(min(width, height) / 250))
    font = _font(max(10, round(min(width, height) / 40)))
    for label in labels:
        x, y, w, h = label.box
        colour = _colour(label.expression)
        draw.rectangle((x, y, x + max(w - 1, 0), y + max(h - 1, 0)), outline=colour, width=line)
        caption = f"{label.expression} {label.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_w, text_h = right - left, bottom - top
        pad = max(1, line)
        tx = min(max(x, 0), max(width - text_w - 2 * pad, 0))
        box_h = text_h + 2 * pad
        ty = y - box_h if y - box_h >= 0 else min(y + h, height - box_h)  # above, else below
        draw.rectangle((tx, ty, tx + text_w + 2 * pad, ty + text_h + 2 * pad), fill=colour)
        draw.text((tx + pad - left, ty + pad - top), caption, fill=(0, 0, 0), font=font)
    return canvas


def encode(image: Image.Image, media_type: str) -> bytes:
    """``image`` as PNG or JPEG bytes (``media_type`` is a key of :data:`FORMATS`)."""
    buffer = io.BytesIO()
    if FORMATS[media_type] == "JPEG":
        image.convert("RGB").save(buffer, "JPEG", quality=90)
    else:
        image.save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()
