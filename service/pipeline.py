"""The request-side steps routes share: read uploads, decode them in the pool, classify.

Routes that run images through a model (``classify``, and the face and Open Inference Protocol
routes built on top) use these steps so that limits, errors and metrics behave the same everywhere.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from service.batching import Batcher
from service.errors import (
    BadRequest,
    ImageTooLarge,
    InvalidImage,
    InvalidParameter,
    ServiceError,
    UnsupportedMediaType,
)
from service.imaging import SUPPORTED, InputSpec, Prepared, pixel_count, prepare, sniff
from service.metrics import Metrics
from service.model_version import ModelVersion
from service.schemas import ImageResult, Prediction

FILE_FIELD = "file"
# Single JPEG uploads up to this size are decoded on the event loop, on machines of 1-2 cores
# only: with more cores the pool's parallel decoding is worth the hand-offs (not measured here).
INLINE_JPEG_BYTES = 128 * 1024 if (os.cpu_count() or 1) <= 2 else 0
NO_FILE = (f"no image: send one or more multipart/form-data fields named '{FILE_FIELD}', or one "
           "image as the raw body with an image/* content type")


@dataclass(frozen=True)
class Upload:
    """One image as received."""

    filename: str | None
    data: bytes


async def read_uploads(request: Request, max_files: int) -> list[Upload]:
    """The images of a request: multipart ``file`` fields, or the raw body.

    Raises:
        InvalidParameter: no image, an empty one, or more than ``max_files`` (HTTP 422).
        UnsupportedMediaType: a content type that is neither multipart nor an image (HTTP 415).
    """
    header = request.headers.get("content-type", "")
    content_type = header.split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        uploads = parse_multipart(await request.body(), header, max_files)
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        body = await request.body()
        uploads = [Upload(None, body)] if body else []
    elif content_type in ("", "application/x-www-form-urlencoded"):
        # `curl --data-binary @photo.jpg` declares a form: take the body if it is an image.
        body = await request.body()
        uploads = [Upload(None, body)] if body and _is_image(body) else []
    else:
        raise UnsupportedMediaType(f"content type {content_type!r} is not accepted: send "
                                   f"multipart/form-data or a raw image ({SUPPORTED})")
    if not uploads:
        raise InvalidParameter(NO_FILE)
    for position, upload in enumerate(uploads, 1):
        if not upload.data:
            raise InvalidParameter(f"image {_name(position, upload)} is empty")
    return uploads


def parse_multipart(body: bytes, content_type: str, max_files: int) -> list[Upload]:
    """The ``file`` parts of a multipart/form-data body (RFC 7578), read in one pass.

    The body is already in memory (its size is capped by ``max_body_bytes``), so splitting on the
    boundary is all it takes; Starlette's streaming parser costs several times more per request.

    Raises:
        BadRequest: broken framing (HTTP 400).
        InvalidParameter: a text ``file`` field, or more than ``max_files`` files (HTTP 422).
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("the multipart/form-data content type has no boundary parameter")
    chunks = body.split(b"--" + boundary)
    uploads: list[Upload] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            return uploads
        head, separator, data = chunk.partition(b"\r\n\r\n")
        if not chunk.startswith(b"\r\n") or not separator or not data.endswith(b"\r\n"):
            raise BadRequest("malformed multipart/form-data body: a part is not framed by "
                             "CRLF and the boundary")
        disposition: dict[bytes, bytes] = {}
        for line in head.split(b"\r\n"):
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-disposition":
                disposition = parse_options_header(value.strip())[1]
        if disposition.get(b"name") != FILE_FIELD.encode():
            continue
        if b"filename" not in disposition:
            raise InvalidParameter(f"field '{FILE_FIELD}' must be a file upload, not text")
        if len(uploads) == max_files:
            raise InvalidParameter(f"too many images: at most {max_files} per request "
                                   "(CONVSERVE_MAX_IMAGES_PER_REQUEST)")
        filename = disposition[b"filename"].decode("utf-8", "replace")
        uploads.append(Upload(filename, data[:-2]))
    raise BadRequest("truncated multipart/form-data body: no closing boundary")


def _is_image(data: bytes) -> bool:
    try:
        sniff(data)
    except InvalidImage:
        return False
    return True  # or UnsupportedMediaType propagates: an image we do not read


def _name(position: int, upload: Upload) -> str:
    return f"#{position}" + (f" ({upload.filename!r})" if upload.filename else "")


def _decode_inline(data: bytes) -> bool:
    """Whether to decode on the event loop rather than in the pool: one small JPEG, 1-2 cores.

    Its cost is bounded (entropy decoding follows the byte count; draft mode scales big pictures
    down while decoding), and skipping the two thread hand-offs (and a fourth busy thread on the
    cores) raised requests/s at 32 clients on 2 cores (docs/service-architecture.md). Everything
    else, whose decoding time the byte count does not bound (PNG...), goes to the pool.
    """
    return len(data) <= INLINE_JPEG_BYTES and data[:3] == b"\xff\xd8\xff"


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
            exc.message = f"image {_name(position, upload)}: {exc.message}"
            raise
    if total > max_total:
        raise ImageTooLarge(f"the {len(uploads)} images have {total} pixels together, more than "
                            f"the limit of {max_total} per request "
                            "(CONVSERVE_MAX_REQUEST_PIXELS); send fewer or smaller images")


async def prepare_uploads(uploads: list[Upload], spec: InputSpec, pool: Executor,
                          max_pixels: int, metrics: Metrics | None = None,
                          labels: tuple[str, str] | None = None,
                          max_request_pixels: int | None = None) -> list[np.ndarray]:
    """Decode and resize every upload in parallel in ``pool``, in order (one small JPEG inline).

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
                outcome.message = f"image {_name(position, upload)}: {outcome.message}"
            raise outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, Prepared)
        if metrics is not None and labels is not None:
            children = metrics.model(*labels)
            children.decode.observe(outcome.decode_s)
            children.preprocess.observe(outcome.preprocess_s)
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
