"""Face detection at a bounded cost: a bounded working copy, and a bounded number in flight.

Memory: MTCNN's cost follows the pixels it reads (its integral image holds 24 bytes per pixel,
its pyramid levels 12), so a 7000x7000 photo cost gigabytes. :func:`detect_bounded` detects on a
copy no larger than needed: a face of ``min_face_size`` pixels is shrunk to no less than O-Net's
48-pixel input (the last stage sees nothing finer), the longest side is capped at
``max_side``, and the boxes and landmarks are mapped back to the photo's pixels. Faces that the
cap shrinks below P-Net's 12-pixel window are not found: a face that small in a photo that big
is not worth gigabytes.

Time and workers: detection runs in its own thread pool (:class:`DetectionSlots`), so it never
holds the decode pool's threads that classification needs. Requests beyond the threads wait in
the pool's queue, in arrival order, holding only their upload's bytes (the photo is decoded
when a thread takes it); at most ``max_pending`` detections run or wait, and only more than that
are answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol, TypeVar

import numpy as np
from PIL import Image

from service.errors import Overloaded
from service.faces import MTCNN, DetectorConfig, Face

DETECTOR_MIN_FACE = 12  # P-Net's window: the smallest face MTCNN sees, in pixels
SHARP_FACE = 48  # O-Net's input side: more pixels per face than this add nothing
T = TypeVar("T")


class FaceDetector(Protocol):
    """What :func:`detect_bounded` needs of a detector (:class:`MTCNN`,
    :class:`service.retinaface.RetinaFace`)."""

    smallest_face: int  # px in the working copy: smaller faces are not found
    sharp_face: int  # px in the working copy: larger faces gain nothing from more pixels
    longest_side: int  # px: the working copy's longest side at most, whatever max_side says

    def detect(self, image: np.ndarray, config: DetectorConfig | None = None) -> list[Face]:
        """Faces in an ``[H, W, 3]`` uint8 RGB image, best score first."""
        ...


def working_scale(size: tuple[int, int], min_face_size: int, max_side: int,
                  sharp_face: int = SHARP_FACE) -> float:
    """The scale (at most 1) of the copy to detect on, for a photo of ``size`` (w, h)."""
    return min(1.0, max_side / max(size), sharp_face / min_face_size)


def detect_bounded(detector: FaceDetector | MTCNN, photo: Image.Image, config: DetectorConfig,
                   max_side: int) -> list[Face]:
    """Faces in ``photo`` (RGB), found on a bounded copy, in the photo's pixel coordinates."""
    max_side = min(max_side, detector.longest_side)
    scale = working_scale(photo.size, config.min_face_size, max_side, detector.sharp_face)
    if scale >= 1.0:
        return detector.detect(np.asarray(photo), config)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    copy = photo.resize(size, Image.Resampling.BOX)  # area average, as MTCNN's own pyramid
    sx, sy = photo.width / size[0], photo.height / size[1]
    smaller = replace(config, min_face_size=max(detector.smallest_face,
                                                round(config.min_face_size * scale)))
    return [Face(box=(face.box[0] * sx, face.box[1] * sy, face.box[2] * sx, face.box[3] * sy),
                 score=face.score, landmarks=face.landmarks * np.array([sx, sy]))
            for face in detector.detect(np.asarray(copy), smaller)]


class DetectionSlots:
    """The detection thread pool and the count of detections running or waiting for it."""

    def __init__(self, threads: int, max_pending: int, retry_after_s: int) -> None:
        self.pool = ThreadPoolExecutor(threads, "detect")
        self.threads = threads
        self.max_pending = max(max_pending, threads)
        self.retry_after_s = retry_after_s
        self.pending = 0

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` in the pool once a thread is free (waiting in arrival order), or
        :class:`Overloaded` (503) when ``max_pending`` detections already run or wait."""
        if self.pending >= self.max_pending:
            running = min(self.pending, self.threads)
            raise Overloaded(f"face detection is full: {running} running and "
                             f"{self.pending - running} waiting, the most allowed "
                             f"(CONVSERVE_MAX_PENDING_DETECTIONS={self.max_pending}); retry after "
                             f"{self.retry_after_s} s",
                             headers={"Retry-After": str(self.retry_after_s)})
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)
        finally:
            self.pending -= 1

    def shutdown(self) -> None:
        """Finish running detections and stop the threads."""
        self.pool.shutdown(wait=True)


class StreamSlots:
    """The count of open streams, bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def acquire(self) -> bool:
        """Take a slot; False when all are taken."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1
