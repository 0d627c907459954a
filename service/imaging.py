"""Decode image bytes into the uint8 ``[H, W, C]`` array a model's ``image`` input wants.

The format comes from the bytes (magic numbers), never from a file name or declared type. The
pixel count is read from the header and checked *before* decoding, so decompression bombs are
refused without being decoded. Big JPEGs are decoded at a reduced scale (Pillow's draft mode:
libjpeg's DCT scaling) when the model needs far fewer pixels; then EXIF orientation, conversion
to grey or RGB (alpha composited on white), and the resize ``model.json`` asks for.
"""

from __future__ import annotations

import io
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from pydantic import ValidationError

from model_format import ImageInput, describe
from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType

# Formats we read, by magic number -> Pillow's format name.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),  # BigTIFF
    (b"MM\x00+", 0, "TIFF"),
    (b"WEBP", 8, "WEBP"),
)
SUPPORTED = "JPEG, PNG, WebP, BMP, GIF, TIFF"

# Decoding cost that the pixel count does not show, bounded before decoding:
# - each scan of a progressive JPEG passes over every coefficient of the picture again (draft
#   mode included), so cost follows scans x pixels, not bytes: encoders write about 10 scans;
#   beyond a budget of JPEG_SCAN_PIXELS (16 full passes of a 50-megapixel photo), or
#   MAX_JPEG_SCANS whatever the size, the image is refused;
# - Pillow keeps a pointer per row and resize coefficients grow with the shrink factor, so a
#   1 x 49,000,000 image costs gigabytes: no side may be longer than MAX_SIDE (JPEG's own limit).
MAX_JPEG_SCANS = 100
MAX_JPEG_SEGMENTS = 4096  # marker segments read at most (cameras write tens); more is refused
JPEG_SCAN_PIXELS = 16 * 50_000_000
MAX_SIDE = 65_535
# A JPEG marker: 0xFF, then a byte other than 0x00 (a stuffed 0xFF in entropy-coded data),
# 0xD0-0xD7 (restart markers, inside a scan) or 0xFF (fill).
_MARKER = re.compile(rb"\xff([^\x00\xd0-\xd7\xff])")
_SOF_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})

# Formats we recognise but do not read (Pillow does not identify all of them).
_FOREIGN: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "PDF"), (b"<svg", 0, "SVG"), (b"<?xml", 0, "SVG/XML"),
    (b"ftypheic", 4, "HEIC"), (b"ftypheix", 4, "HEIC"), (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"), (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"), (b"\xff\x0a", 0, "JPEG XL"),
    (b"8BPS", 0, "PSD"),
)

RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "area": Image.Resampling.BOX,
}
# The resize methods and interpolation names are defined by model_format.


@dataclass(frozen=True)
class InputSpec:
    """What a model's ``image`` input wants: ``model.json``'s ``input`` object."""

    height: int
    width: int
    channels: int  # 1 (grey) or 3 (RGB)
    method: str = "stretch"  # one of model_format.RESIZE_METHODS
    shorter_side: int | None = None  # for shorter-side-center-crop
    interpolation: str = "bilinear"  # a key of RESAMPLE

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> InputSpec:
        """Parse and check ``model.json``'s ``input`` (:class:`~model_format.ImageInput`).

        Raises:
            ValueError: naming the field to fix.
        """
        try:
            return cls.from_card(ImageInput.model_validate(spec))
        except ValidationError as error:
            raise ValueError(describe(error, prefix="input.")) from None

    @classmethod
    def from_card(cls, spec: ImageInput) -> InputSpec:
        """The validated ``input`` of a model card, as a plain frozen record (hot path)."""
        return cls(height=spec.height, width=spec.width, channels=spec.channels,
                   method=spec.resize.method, shorter_side=spec.resize.shorter_side,
                   interpolation=spec.resize.interpolation)


@dataclass(frozen=True)
class Prepared:
    """A model-ready array and how long each stage took."""

    array: np.ndarray  # uint8 [H, W, C]
    decoded_size: tuple[int, int]  # (width, height) as decoded: smaller when draft mode scaled
    decode_s: float  # sniff, header, decode, orientation, mode conversion
    preprocess_s: float  # resize/crop to the model's input


def sniff(data: bytes) -> str:
    """Pillow's name for the image format of ``data``.

    Raises:
        UnsupportedMediaType: a real format we do not read.
        InvalidImage: bytes that are no image at all.
    """
    for magic, offset, name in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            if name == "WEBP" and data[:4] != b"RIFF":
                continue
            return name
    head = data[:64].lstrip()
    for magic, offset, name in _FOREIGN:
        if head[offset:offset + len(magic)] == magic or (name == "SVG" and b"<svg" in data[:512]):
            raise UnsupportedMediaType(f"{name} is not an image format this service reads; "
                                       f"send {SUPPORTED}")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            other = probe.format
    except Exception:
        other = None
    if other:
        raise UnsupportedMediaType(f"{other} images are not supported; send {SUPPORTED}")
    raise InvalidImage(f"the data is not a decodable image ({len(data)} bytes); send {SUPPORTED}")


@dataclass(frozen=True)
class JpegLayout:
    """What a JPEG's markers say about its decoding cost."""

    progressive: bool
    scans: int  # SOS segments: each one a pass over the picture (counted up to MAX_JPEG_SCANS+1)
    width: int  # from the frame header (0 if none was found)
    height: int
    segments: int = 0  # marker segments read (reading stops past MAX_JPEG_SEGMENTS)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def jpeg_layout(data: bytes) -> JpegLayout:
    """Read a JPEG's markers, skipping each segment by its length (so thumbnails inside EXIF do
    not count) and the entropy-coded data after each SOS with one regular expression. Costs
    microseconds per kilobyte; nothing is decoded."""
    position, scans, progressive, width, height, segments = 2, 0, False, 0, 0, 0
    size = len(data)
    while position + 4 <= size and segments <= MAX_JPEG_SEGMENTS and scans <= MAX_JPEG_SCANS:
        segments += 1
        found = _MARKER.search(data, position)
        if found is None:
            break
        marker = found.group(1)[0]
        position = found.end()
        if marker in (0xD8, 0x01):  # SOI, TEM: no length
            continue
        if marker == 0xD9:  # EOI
            break
        if position + 2 > size:
            break
        length = int.from_bytes(data[position:position + 2], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header
            progressive = progressive or marker in _SOF_PROGRESSIVE
            head = data[position + 3:position + 7]
            if len(head) == 4 and not width:
                height, width = int.from_bytes(head[:2], "big"), int.from_bytes(head[2:], "big")
        elif marker == 0xDA:
            scans += 1
        position += length  # then the entropy-coded data (SOS) or the next marker
    return JpegLayout(progressive, scans, width, height, segments)


def _check_jpeg_cost(data: bytes) -> None:
    """Refuse, before Pillow reads its header (a Python loop over every segment), a JPEG whose
    segments or scans would cost more than its pixels say."""
    layout = jpeg_layout(data)
    width, height = layout.width, layout.height
    if layout.segments > MAX_JPEG_SEGMENTS:
        raise ImageTooLarge(f"the JPEG holds more than {MAX_JPEG_SEGMENTS} marker segments "
                            "(cameras and encoders write tens): re-encode it")
    scans = layout.scans
    if scans <= 1:
        return
    budget = max(1, min(MAX_JPEG_SCANS, JPEG_SCAN_PIXELS // max(1, width * height)))
    if scans > budget:
        raise ImageTooLarge(
            f"the {width}x{height} JPEG holds "
            f"{scans if scans <= MAX_JPEG_SCANS else f'more than {MAX_JPEG_SCANS}'} scans; "
            "decoding passes over every pixel once per scan, and at this size at most "
            f"{budget} are accepted (encoders write about 10): re-encode it (baseline, or "
            "progressive with the default scans)")


def _open(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    if fmt == "JPEG":
        _check_jpeg_cost(data)
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:  # past twice Pillow's own limit: our words
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{declared.group(1)} pixels" if declared else "more pixels than Pillow opens"
        raise ImageTooLarge(f"the image is {size}, more than the limit of {max_pixels}; scale "
                            "it down before sending") from None
    except Exception as exc:
        raise InvalidImage(f"the {fmt} header cannot be read ({exc}); the file is corrupt "
                           "or truncated") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"the image is {width}x{height} = {width * height} pixels, more than "
                            f"the limit of {max_pixels}; scale it down before sending")
    if width < 1 or height < 1:
        raise InvalidImage(f"the image is {width}x{height}: empty")
    if max(width, height) > MAX_SIDE:
        raise ImageTooLarge(f"the image is {width}x{height}: no side may be longer than "
                            f"{MAX_SIDE} pixels (decoding and resizing cost memory per row and "
                            "per column); crop or scale it down before sending")
    return image


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _needed_size(size: tuple[int, int], spec: InputSpec, swap: bool) -> tuple[int, int]:
    """The smallest decoded (width, height) the resize still needs at full quality."""
    width, height = (size[1], size[0]) if swap else size
    if spec.method == "shorter-side-center-crop":
        scale = max(spec.shorter_side or 0, spec.height, spec.width) / min(width, height)
        need = (math.ceil(width * scale), math.ceil(height * scale))
    else:
        need = (spec.width, spec.height)
    return (need[1], need[0]) if swap else need


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def crop_box(size: tuple[int, int], spec: InputSpec) -> tuple[float, float, float, float]:
    """The part of an image of ``size`` (width, height) that :func:`prepare` turns into the
    model's input, as ``(left, top, right, bottom)`` in its pixels: all of it when stretched."""
    width, height = size
    if spec.method == "stretch":
        return (0.0, 0.0, float(width), float(height))
    # Shorter side to `shorter_side`, centre crop height x width: one resample of the crop box.
    side = spec.shorter_side or min(spec.width, spec.height)
    resized_w, resized_h = (
        (side, int(side * height / width)) if width <= height
        else (int(side * width / height), side))
    left = round((resized_w - spec.width) / 2) if resized_w >= spec.width else 0
    top = round((resized_h - spec.height) / 2) if resized_h >= spec.height else 0
    scale_x, scale_y = width / resized_w, height / resized_h
    return (left * scale_x, top * scale_y, (left + spec.width) * scale_x,
            (top + spec.height) * scale_y)


def _resize(image: Image.Image, spec: InputSpec) -> Image.Image:
    resample = RESAMPLE[spec.interpolation]
    if spec.method == "stretch":
        if image.size == (spec.width, spec.height):
            return image
        return image.resize((spec.width, spec.height), resample)
    return image.resize((spec.width, spec.height), resample, box=crop_box(image.size, spec))


def to_input(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """A decoded image as the model takes it, uint8 ``[H, W, C]``: the same mode conversion and
    resize as :func:`prepare` (used offline to measure a model through the service's resize)."""
    array = np.asarray(_resize(_to_mode(image, spec.channels), spec))
    return array[:, :, None] if array.ndim == 2 else array


def _decode(data: bytes, max_pixels: int, channels: int,
            spec: InputSpec | None) -> tuple[Image.Image, tuple[int, int]]:
    """Sniff, guard, decode (JPEG at reduced scale when ``spec`` needs fewer pixels), orient.

    Returns the image in L or RGB and its decoded size after orientation.
    """
    fmt = sniff(data)
    image = _open(data, fmt, max_pixels)
    orientation = _orientation(image)
    if fmt == "JPEG" and spec is not None:
        need = _needed_size(image.size, spec, swap=orientation in (5, 6, 7, 8))
        image.draft("L" if channels == 1 else "RGB", need)
    try:
        image.load()  # GIF, TIFF: the first frame
    except Exception as exc:
        raise InvalidImage(f"the {fmt} data cannot be decoded ({exc}); the file is corrupt or "
                           "truncated") from None
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    decoded_size = image.size
    return _to_mode(image, channels), decoded_size


def pixel_count(data: bytes, max_pixels: int) -> int:
    """Width times height from the image's header, without decoding it.

    Raises:
        InvalidImage, ImageTooLarge, UnsupportedMediaType: as :func:`prepare`.
    """
    with _open(data, sniff(data), max_pixels) as image:
        return image.width * image.height


def decode(data: bytes, max_pixels: int, channels: int = 3) -> Image.Image:
    """The whole image at its own size, EXIF orientation applied, as L (1) or RGB (3).

    Raises:
        InvalidImage, ImageTooLarge, UnsupportedMediaType: as :func:`prepare`.
    """
    return _decode(data, max_pixels, channels, None)[0]


def prepare(data: bytes, spec: InputSpec, max_pixels: int) -> Prepared:
    """Decode ``data`` and turn it into the model's input, timing decode and preprocessing.

    Raises:
        InvalidImage: corrupt or truncated bytes (HTTP 400).
        ImageTooLarge: more pixels than ``max_pixels``, refused before decoding (HTTP 413).
        UnsupportedMediaType: a format we do not read (HTTP 415).
    """
    start = time.perf_counter()
    image, decoded_size = _decode(data, max_pixels, spec.channels, spec)
    decoded = time.perf_counter()
    image = _resize(image, spec)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    return Prepared(array=array, decoded_size=decoded_size, decode_s=decoded - start,
                    preprocess_s=time.perf_counter() - decoded)
