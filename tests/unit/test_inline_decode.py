"""Which uploads ``prepare_uploads`` decodes on the event loop (one small JPEG or PNG on 1-2
cores) and which go to the decode pool: a pool that is shut down refuses work, so an image
that needed it fails and one decoded inline does not."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import service.pipeline
from model_format import load_card
from service.imaging import InputSpec, prepare
from service.pipeline import Upload, prepare_uploads
from tests.conftest import SHIPPED_MODELS

ROOT = Path(__file__).resolve().parents[2]
LENET = SHIPPED_MODELS / "mnist-lenet5" / "1" / "model.json"


@pytest.fixture
def closed_pool() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    return pool


def png(side: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.arange(side * side, dtype=np.uint8).reshape(side, side), "L").save(
        out, "PNG")
    return out.getvalue()


@pytest.mark.skipif(not LENET.is_file(), reason="the shipped mnist-lenet5 is missing")
def test_a_small_png_is_decoded_inline_and_a_big_one_in_the_pool(
        closed_pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service.pipeline, "INLINE_PNG_PIXELS", 128 * 128)
    spec = InputSpec.from_card(load_card(LENET).input)
    digit = (ROOT / "samples" / "digit.png").read_bytes()
    with Image.open(io.BytesIO(digit)) as image:
        assert image.width * image.height <= 128 * 128
    (array,) = asyncio.run(prepare_uploads([Upload("digit.png", digit)], spec, closed_pool,
                                           10**8))
    assert np.array_equal(array, prepare(digit, spec, 10**8).array)
    small = asyncio.run(prepare_uploads([Upload(None, png(128))], spec, closed_pool, 10**8))
    assert small[0].shape == (28, 28, 1)
    with pytest.raises(RuntimeError, match="shutdown"):  # 129x129: over the limit, to the pool
        asyncio.run(prepare_uploads([Upload(None, png(129))], spec, closed_pool, 10**8))
    with pytest.raises(RuntimeError, match="shutdown"):  # two images: the pool, in parallel
        asyncio.run(prepare_uploads([Upload(None, digit)] * 2, spec, closed_pool, 10**8))
    monkeypatch.setattr(service.pipeline, "INLINE_PNG_PIXELS", 0)  # more than 2 cores
    with pytest.raises(RuntimeError, match="shutdown"):
        asyncio.run(prepare_uploads([Upload(None, digit)], spec, closed_pool, 10**8))
