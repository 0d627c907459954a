"""One explanation as the service runs it: admitted and queued like every other inference.

An occlusion map costs 65 images. They go through the batcher (``submit_many``), so they count
against the version's queue limit (503 + ``Retry-After`` when it is full) and take their turn
with classification's images instead of running beside the batcher in the decode pool, where
16 concurrent explanations made a 15 ms classify wait 23.6 s (docs/hardening.md). Decoding,
building the occluded copies and drawing the PNG run in the decode pool, as classify's decoding
does; a class activation map (one image, two runs) too.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service import explain, imaging
from service.batching import Batcher
from service.model_version import ModelVersion


@dataclass(frozen=True)
class Explained:
    """An explanation and the photo it is drawn over."""

    result: explain.Explanation
    photo_size: tuple[int, int]  # (width, height) as displayed
    box: tuple[float, float, float, float]  # the part of the photo the model saw
    png: bytes | None  # the photo with the map blended over it, when asked for


def _prepare(version: ModelVersion, data: bytes, max_pixels: int, occlude: bool,
             ) -> tuple[imaging.Prepared, np.ndarray | None, list[tuple[int, int, int, int]]]:
    assert version.input is not None
    prepared = imaging.prepare(data, version.input, max_pixels)
    if not occlude:
        return prepared, None, []
    batch, boxes = explain.occlusion_inputs(version, prepared.array)
    return prepared, batch, boxes


def _draw(version: ModelVersion, data: bytes, max_pixels: int, prepared: imaging.Prepared,
          result: explain.Explanation, png: bool) -> Explained:
    if png:
        photo = imaging.decode(data, max_pixels)
        box = explain.region(prepared.decoded_size, photo.size, version)
        return Explained(result, photo.size, box, explain.blend_png(photo, result.map, box))
    size = explain.oriented_size(data)
    return Explained(result, size, explain.region(prepared.decoded_size, size, version), None)


async def explain_upload(version: ModelVersion, data: bytes, wanted: str | None,
                         method: str | None, png: bool, max_pixels: int, pool: Executor,
                         batcher: Batcher) -> Explained:
    """Decode ``data``, explain class ``wanted`` (default the top-1) by ``method`` (default the
    model's), and draw it for ``png``.

    Raises:
        CannotExplain, InvalidParameter: before any inference (HTTP 422).
        Overloaded: the version's queue cannot take the occluded images (HTTP 503).
        InvalidImage, ImageTooLarge, UnsupportedMediaType: as classify.
    """
    chosen = explain.require_method(version, method)
    if wanted:  # a class that does not exist is refused before 65 images are computed
        explain.resolve_class(wanted, version.labels, np.zeros(len(version.labels)))
    loop = asyncio.get_running_loop()
    occlude = chosen == "occlusion"
    prepared, batch, boxes = await loop.run_in_executor(
        pool, _prepare, version, data, max_pixels, occlude)
    if batch is None:
        result = await loop.run_in_executor(
            pool, explain.class_activation_map, version, prepared.array, wanted)
    else:
        rows = await batcher.submit_many(version, list(batch))
        per_run = min(batcher.max_batch_size, version.max_batch or batcher.max_batch_size)
        result = explain.occlusion_from(version, prepared.array.shape, np.stack(rows), boxes,
                                        wanted, runs=math.ceil(len(rows) / per_run))
    return await loop.run_in_executor(pool, _draw, version, data, max_pixels, prepared, result,
                                      png)
