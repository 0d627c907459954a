"""One explanation as the service runs it: admitted and queued like every other inference.

An occlusion map costs 65 images. They go through the batcher (``submit_many``), so they count
against the version's queue limit (503 + ``Retry-After`` when it is full) and take their turn
with classification's images instead of running beside the batcher in the decode pool, where
16 concurrent explanations made a 15 ms classify wait 23.6 s (docs/hardening.md). Decoding,
building the occluded copies and drawing the PNG run in the decode pool, as classify's decoding
does. A class activation map (one image) is queued as one image too, and made in its turn in the
version's inference thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from service import explain, imaging
from service.model_version import ModelVersion

if TYPE_CHECKING:
    from service.engine import Engine


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


async def explain_upload(engine: Engine, version: ModelVersion, data: bytes,
                         wanted: str | None, method: str | None, png: bool) -> Explained:
    """Decode ``data``, explain class ``wanted`` (default the top-1) by ``method`` (default the
    model's), and draw it for ``png``.

    Raises:
        UnsupportedTask, InvalidParameter: before any inference (HTTP 422).
        Overloaded: the version's queue cannot take the occluded images (HTTP 503).
        InvalidImage, ImageTooLarge, UnsupportedMediaType: as classify.
    """
    chosen = explain.require_method(version, method)
    if wanted:  # a class that does not exist is refused before 65 images are computed
        explain.resolve_class(wanted, version.labels, np.zeros(len(version.labels)))
    max_pixels = engine.settings.max_image_pixels
    prepared, batch, boxes = await engine.in_pool(_prepare, version, data, max_pixels,
                                                  chosen == "occlusion")
    if batch is None:  # queued like a classify image; the map is made in its turn, in the
        # version's inference thread (its own two runs: the row batched with it is not used)
        def cam(_row: np.ndarray) -> explain.Explanation:
            return explain.class_activation_map(version, prepared.array, wanted)

        (result,) = await engine.infer(version, [prepared.array], cam)
    else:  # the batcher's queue: admitted, or 503, like every other request's images
        rows = await engine.infer(version, list(batch))
        largest = engine.settings.max_batch_size
        per_run = min(largest, version.max_batch or largest)
        result = explain.occlusion_from(version, prepared.array.shape, np.stack(rows), boxes,
                                        wanted, runs=math.ceil(len(rows) / per_run))
    return await engine.in_pool(_draw, version, data, max_pixels, prepared, result, png)
