"""The steps every protocol shares for images: decode them in the pool, classify them.

What arrives (:class:`Upload`: a file name and bytes) is protocol-neutral; reading it from an HTTP
request is :mod:`service.http.uploads`' job. Every adapter uses these steps so that limits, errors
and metrics behave the same everywhere.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.batching import Batcher
from service.errors import (
    ImageTooLarge,
    ServiceError,
)
from service.imaging import InputSpec, Prepared, jpeg_layout, pixel_count, prepare
from service.metrics import ModelMetrics
from service.model_version import ModelVersion
from service.schemas import ImageResult, Prediction

# Single uploads up to this size are decoded on the event loop, on machines of 1-2 cores only
# (with more cores the pool's parallel decoding is worth the hand-offs, not measured here): a
# baseline JPEG (one scan) of at most INLINE_JPEG_PIXELS, or a PNG of at most INLINE_PNG_PIXELS
# (read from the header). A progressive JPEG passes over the picture once per scan, and a tiny
# file can describe a huge grey picture: those go to the pool.
_FEW_CORES = (os.cpu_count() or 1) <= 2
INLINE_JPEG_BYTES = 128 * 1024 if _FEW_CORES else 0
INLINE_JPEG_PIXELS = 4_000_000
INLINE_PNG_PIXELS = 128 * 128 if _FEW_CORES else 0
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Upload:
    """One image as received."""

    filename: str | None
    data: bytes


def image_name(position: int, upload: Upload) -> str:
    return f"#{position}" + (f" ({upload.filename!r})" if upload.filename else "")


def _decode_inline(data: bytes) -> bool:
    """Whether to decode on the event loop rather than in the pool: one small baseline JPEG of
    at most :data:`INLINE_JPEG_PIXELS`, or one small PNG of few pixels, 1-2 cores.

    Its cost is bounded (one scan: entropy decoding follows the byte count; PNG: inflating
    follows the pixel count its header gives), and skipping the two thread hand-offs (and a
    fourth busy thread on the cores) raised requests/s at 32 clients on 2 cores
    (docs/service-architecture.md, docs/performance-profile.md). Everything else, whose decoding
    time the byte count does not bound (progressive JPEGs, big PNGs...), goes to the pool.
    """
    if len(data) > INLINE_JPEG_BYTES:
        return False
    if data[:3] == b"\xff\xd8\xff":
        layout = jpeg_layout(data)
        return (not layout.progressive and layout.scans == 1
                and 0 < layout.pixels <= INLINE_JPEG_PIXELS)
    if data[:8] == _PNG and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = int.from_bytes(data[16:20]), int.from_bytes(data[20:24])
        return width * height <= INLINE_PNG_PIXELS
    return False


def check_request_pixels(uploads: list[Upload], max_pixels: int, max_total: int) -> None:
    """Refuse, before decoding any, images that together have more than ``max_total`` pixels.

    Each image alone is held to ``max_pixels`` when decoded; a request of many large images
    (64 GIFs of 49 megapixels each, 35 bytes apiece) would still cost minutes of decoding.

    Raises:
        ImageTooLarge: naming the total and the limit (HTTP 413); or the first image whose
            header cannot be read, as :func:`prepare` would.
    """
    total = 0
    for position, upload in enumerate(uploads, 1):
        try:
            total += pixel_count(upload.data, max_pixels)
        except ServiceError as exc:
            exc.message = f"image {image_name(position, upload)}: {exc.message}"
            raise
    if total > max_total:
        raise ImageTooLarge(f"the {len(uploads)} images have {total} pixels together, more than "
                            f"the limit of {max_total} per request "
                            "(CONVSERVE_MAX_REQUEST_PIXELS); send fewer or smaller images")


async def prepare_uploads(uploads: list[Upload], spec: InputSpec, pool: Executor,
                          max_pixels: int, metrics: ModelMetrics | None = None,
                          max_request_pixels: int | None = None) -> list[np.ndarray]:
    """Decode and resize every upload in parallel in ``pool``, in order (one small JPEG or PNG
    inline).

    With several uploads, their pixels together are checked against ``max_request_pixels``
    first, from their headers.

    Raises:
        ServiceError: the first failing image's error, its message naming the image.
    """
    if len(uploads) > 1 and max_request_pixels is not None:
        check_request_pixels(uploads, max_pixels, max_request_pixels)
    done: list[Prepared | BaseException]
    if len(uploads) == 1 and _decode_inline(uploads[0].data):
        try:
            done = [prepare(uploads[0].data, spec, max_pixels)]
        except Exception as exc:
            done = [exc]
    else:
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(pool, prepare, up.data, spec, max_pixels) for up in uploads]
        done = await asyncio.gather(*jobs, return_exceptions=True)
    arrays = []
    for position, (upload, outcome) in enumerate(zip(uploads, done, strict=True), 1):
        if isinstance(outcome, ServiceError):
            if len(uploads) > 1:
                outcome.message = f"image {image_name(position, upload)}: {outcome.message}"
            raise outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, Prepared)
        if metrics is not None:
            metrics.decode.observe(outcome.decode_s)
            metrics.preprocess.observe(outcome.preprocess_s)
        arrays.append(outcome.array)
    return arrays


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    """The ``k`` best classes of one output row, highest score first (ties: lower index first).

    Classification runs it in the inference thread (``batcher.submit(..., finish=...)``), off the
    event loop.
    """
    best = np.argsort(-probabilities, kind="stable")[:k].tolist()
    scores = probabilities[best].tolist()
    # model_construct: the fields already have the right types; validating them only costs.
    return [Prediction.model_construct(label=labels[i] if i < len(labels) else str(i), index=i,
                                       score=score) for i, score in zip(best, scores, strict=True)]


async def classify(version: ModelVersion, arrays: list[np.ndarray], uploads: list[Upload],
                   batcher: Batcher, k: int) -> list[ImageResult]:
    """Submit every array to the batcher; each output row becomes its top-k predictions."""
    labels = version.labels

    def rank(row: np.ndarray) -> list[Prediction]:
        return top_k(row, labels, k)

    ranked = await batcher.submit_many(version, arrays, rank)
    return [ImageResult.model_construct(filename=upload.filename, predictions=predictions)
            for upload, predictions in zip(uploads, ranked, strict=True)]
