"""service.imaging on real photos: sniffing, guards, draft mode, orientation, modes, resize."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from service.imaging import InputSpec, prepare, sniff

CROP = InputSpec(224, 224, 3, "shorter-side-center-crop", 256, "bilinear")


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


@pytest.fixture(scope="module")
def chelsea(photo: Callable[[str], bytes]) -> Image.Image:
    return Image.open(io.BytesIO(photo("chelsea"))).convert("RGB")


def _native(image: Image.Image, channels: int = 3) -> InputSpec:
    return InputSpec(image.height, image.width, channels)  # stretch to its own size: no resample


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_sniff_reads_the_bytes(chelsea: Image.Image, fmt: str) -> None:
    assert sniff(_encode(chelsea, fmt)) == fmt


def test_sniff_refuses_other_formats(chelsea: Image.Image) -> None:
    with pytest.raises(UnsupportedMediaType, match="PDF"):
        sniff(b"%PDF-1.4\n%\xe2\xe3")
    with pytest.raises(UnsupportedMediaType, match="ICO images"):
        sniff(_encode(chelsea.resize((32, 32)), "ICO"))
    with pytest.raises(InvalidImage, match="not a decodable image"):
        sniff(b"GIF88 nothing here")


def test_pixel_limit_is_checked_before_decoding(chelsea: Image.Image) -> None:
    data = _encode(chelsea, "PNG")
    cut = data[:data.index(b"IDAT") + 64]  # the header survives, the pixels do not
    with pytest.raises(ImageTooLarge, match="451x300 = 135300 pixels"):
        prepare(cut, CROP, max_pixels=100_000)
    with pytest.raises(InvalidImage, match="truncated"):
        prepare(cut, CROP, max_pixels=10**9)


def test_a_header_past_pillows_own_limit_is_refused_in_our_words() -> None:
    """Over ~179 MP Pillow refuses to open the file itself ("decompression bomb DOS attack"):
    the client reads the same sentence as for any image over the limit."""
    screen = struct.pack("<6sHHBBB", b"GIF89a", 15000, 15000, 0x80, 0, 0)  # 225 MP declared
    gif = screen + b"\x00\x00\x00\xff\xff\xff," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) \
        + b"\x02\x02\x44\x01\x00;"
    with pytest.raises(ImageTooLarge) as caught:
        prepare(gif, CROP, max_pixels=50_000_000)
    assert caught.value.message == ("the image is 225000000 pixels, more than the limit of "
                                    "50000000; scale it down before sending")
    assert "bomb" not in caught.value.message and "DOS" not in caught.value.message


def test_big_jpeg_is_decoded_at_reduced_scale(photo: Callable[[str], bytes]) -> None:
    data = photo("face-bw")  # a 2560x1912 greyscale JPEG
    prepared = prepare(data, CROP, 10**9)
    assert prepared.decoded_size == (640, 478)  # 1/4 scale: the smallest with >= 256 px
    full = Image.open(io.BytesIO(data)).convert("RGB")
    reference = full.resize((342, 256), Image.Resampling.BILINEAR).crop((59, 16, 283, 240))
    difference = np.abs(prepared.array.astype(int) - np.asarray(reference, dtype=int))
    assert prepared.array.shape == (224, 224, 3) and difference.mean() < 2


def test_small_jpeg_is_decoded_in_full(photo: Callable[[str], bytes]) -> None:
    assert prepare(photo("rocket"), CROP, 10**9).decoded_size == (640, 427)


INVERSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", sorted(INVERSE))
def test_exif_orientation(chelsea: Image.Image, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = _encode(chelsea.transpose(INVERSE[orientation]), "PNG", exif=exif.tobytes())
    prepared = prepare(stored, _native(chelsea), 10**9)
    np.testing.assert_array_equal(prepared.array, np.asarray(chelsea))


def test_exif_rotated_big_jpeg_uses_the_displayed_size(photo: Callable[[str], bytes]) -> None:
    upright = Image.open(io.BytesIO(photo("face-bw"))).convert("L")
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95,
                   exif=exif.tobytes())
    spec = InputSpec(224, 224, 1, "shorter-side-center-crop", 256)
    turned = prepare(data, spec, 10**9)
    straight = prepare(_encode(upright, "JPEG", quality=95), spec, 10**9)
    assert turned.decoded_size == (640, 478) == straight.decoded_size
    assert np.abs(turned.array.astype(int) - straight.array.astype(int)).mean() < 3


def test_grey_to_rgb_and_rgb_to_grey(chelsea: Image.Image) -> None:
    grey = chelsea.convert("L")
    as_rgb = prepare(_encode(grey, "PNG"), _native(grey), 10**9).array
    assert as_rgb.shape == (300, 451, 3)
    assert (as_rgb == np.asarray(grey)[..., None]).all()
    as_grey = prepare(_encode(chelsea, "PNG"), _native(chelsea, 1), 10**9).array
    np.testing.assert_array_equal(as_grey[..., 0], np.asarray(grey))


def test_sixteen_bit_grey_png(chelsea: Image.Image) -> None:
    grey = np.asarray(chelsea.convert("L"), dtype=np.uint16)
    deep = Image.fromarray(grey * 257)
    assert deep.mode == "I;16"
    array = prepare(_encode(deep, "PNG"), _native(chelsea, 1), 10**9).array[..., 0]
    assert np.abs(array.astype(int) - grey.astype(int)).max() <= 1


def test_palette_with_transparency_is_composited_on_white(chelsea: Image.Image) -> None:
    palette = chelsea.quantize(64)
    palette.info["transparency"] = 0
    data = _encode(palette, "PNG", transparency=0)
    array = prepare(data, _native(chelsea), 10**9).array
    clear = np.asarray(palette) == 0
    assert clear.any() and (array[clear] == 255).all()
    opaque = np.asarray(palette.convert("RGB"))[~clear]
    np.testing.assert_array_equal(array[~clear], opaque)


def test_cmyk_jpeg(chelsea: Image.Image) -> None:
    array = prepare(_encode(chelsea.convert("CMYK"), "JPEG", quality=95), _native(chelsea),
                    10**9).array
    assert np.abs(array.astype(int) - np.asarray(chelsea, dtype=int)).mean() < 6


def test_gif_first_frame(chelsea: Image.Image, photo: Callable[[str], bytes]) -> None:
    other = Image.open(io.BytesIO(photo("coffee"))).convert("RGB").resize(chelsea.size)
    first = chelsea.quantize(256)
    data = _encode(first, "GIF", save_all=True, append_images=[other.quantize(256)])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    np.testing.assert_array_equal(prepare(data, _native(chelsea), 10**9).array,
                                  np.asarray(first.convert("RGB")))


def test_shorter_side_center_crop_matches_resize_then_crop(chelsea: Image.Image) -> None:
    array = prepare(_encode(chelsea, "PNG"), CROP, 10**9).array  # 451x300 -> 384x256 -> crop
    reference = chelsea.resize((384, 256), Image.Resampling.BILINEAR).crop((80, 16, 304, 240))
    assert array.shape == (224, 224, 3)
    assert np.abs(array.astype(int) - np.asarray(reference, dtype=int)).mean() < 2


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "area"])
def test_stretch(chelsea: Image.Image, interpolation: str) -> None:
    spec = InputSpec(28, 40, 1, "stretch", None, interpolation)
    array = prepare(_encode(chelsea, "PNG"), spec, 10**9).array
    assert array.shape == (28, 40, 1) and array.dtype == np.uint8 and array.std() > 10


@pytest.mark.parametrize(("spec", "message"), [
    ({"height": 8, "width": 8, "channels": 4}, "input.channels: Input should be 1 or 3"),
    ({"height": 8, "width": 8, "resize": {"method": "squash"}}, "resize.method"),
    ({"height": 8, "width": 8, "resize": {"interpolation": "lanczos9"}}, "interpolation"),
    ({"height": 8, "width": 8, "resize": {"method": "shorter-side-center-crop"}},
     "shorter_side is required"),
])
def test_input_spec_errors(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InputSpec.from_json(spec)
