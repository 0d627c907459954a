"""Live expression streams, without a web framework: frames in, one answer per processed frame.

A stream receives frames (JPEG or PNG bytes) faster or slower than it can process them.
:class:`LatestFrame` holds at most one frame waiting: a newer frame replaces it and the older
one is counted as dropped, so a fast sender (or a flood) costs one frame of memory, never a
queue. :class:`Stream` takes the latest frame, at most ``max_fps`` a second, runs it through the
same steps as ``POST /v1/expressions`` (:func:`service.expressions.analyse` in the detection
slots, then the expression model through the batcher), follows the faces with a
:class:`service.tracking.Tracker` and answers a JSON-ready dict: frame number, counters, faces
with track ids, smoothed and raw probabilities, and timings.

:class:`service.detection.StreamSlots` bounds the number of open streams. The protocol adapter
(``service/http/routes/stream.py``) owns the socket: it reads frames into the
:class:`LatestFrame`, sends the answers, enforces the idle and send timeouts and maps errors to
close codes; when it returns, the stream's slot, frame and tracks are gone with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.detection import DetectionSlots, FaceDetector
from service.errors import Overloaded
from service.expressions import Analysis, CropSpec, analyse
from service.faces import DetectorConfig
from service.imaging import InputSpec
from service.metrics import Metrics
from service.tracking import Tracker

Classify = Callable[[list[np.ndarray]], Awaitable[list[np.ndarray]]]  # crops -> probabilities


@dataclass(frozen=True)
class StreamLimits:
    """What one stream may cost (``CONVSERVE_STREAM_*`` settings)."""

    max_frame_bytes: int = 2_000_000  # a bigger message closes the stream (1009)
    max_frame_pixels: int = 4_000_000  # a frame decoding to more closes it (1009)
    max_fps: float = 30.0  # frames processed per second at most; the rest are dropped
    idle_timeout_s: float = 30.0  # no frame for this long closes the stream (1001)
    send_timeout_s: float = 10.0  # an answer the client does not take in this long closes it
    max_streams: int = 4  # open streams at most; more are closed at once (1013)
    detect_side: int = 320  # faces are detected on a copy no longer than this
    max_faces: int = 20  # faces per frame at most (best first)


class LatestFrame:
    """At most one frame waiting to be processed; a newer one replaces it."""

    def __init__(self) -> None:
        self.frame: tuple[int, bytes, float] | None = None  # number, bytes, time received
        self.received = 0
        self.dropped = 0
        self.closed = False
        self._ready = asyncio.Event()

    def put(self, data: bytes) -> None:
        """A frame arrived (numbered from 1); the waiting one, if any, is dropped."""
        self.received += 1
        if self.frame is not None:
            self.dropped += 1
        self.frame = (self.received, data, time.perf_counter())
        self._ready.set()

    def close(self) -> None:
        """No more frames: the waiting one is let go, :meth:`take` answers None."""
        self.closed = True
        self.frame = None
        self._ready.set()

    async def take(self) -> tuple[int, bytes, float] | None:
        """The latest frame, waiting for one; None when closed and none is waiting."""
        while self.frame is None:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        frame, self.frame = self.frame, None
        return frame


@dataclass
class Stream:
    """One client's stream: its models, limits, tracker and counters."""

    detector: FaceDetector
    spec: InputSpec
    crop: CropSpec
    labels: list[str]
    classify: Classify
    detection: DetectionSlots
    metrics: Metrics
    limits: StreamLimits = field(default_factory=StreamLimits)
    config: DetectorConfig = field(default_factory=DetectorConfig)
    frames: LatestFrame = field(default_factory=LatestFrame)
    tracker: Tracker = field(default_factory=Tracker)
    processed: int = 0
    busy: int = 0  # frames dropped because every detection slot was taken
    last_start: float = 0.0
    counted_drops: int = 0  # of frames.dropped, those already in the metrics

    async def next_answer(self) -> dict[str, Any] | None:
        """Process the latest frame (paced to ``max_fps``) and answer it; None at the end.

        Raises:
            InvalidImage, UnsupportedMediaType, ImageTooLarge: the frame (the adapter closes).
        """
        while True:
            wait = self.last_start + 1.0 / self.limits.max_fps - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            taken = await self.frames.take()
            self.metrics.stream_frames.labels("dropped").inc(
                self.frames.dropped - self.counted_drops)
            self.counted_drops = self.frames.dropped
            if taken is None:
                return None
            number, data, received = taken
            self.last_start = time.perf_counter()
            try:
                return await self._answer(number, data, received)
            except Overloaded:  # the detection slots are full: this frame is dropped
                self.busy += 1
                self.frames.dropped += 1
                self.counted_drops += 1
                self.metrics.stream_frames.labels("dropped").inc()

    async def _answer(self, number: int, data: bytes, received: float) -> dict[str, Any]:
        queued = time.perf_counter() - received
        try:
            result: Analysis = await self.detection.run(
                analyse, data, self.limits.max_frame_pixels, self.detector, self.config,
                self.spec, self.crop, self.limits.max_faces, self.limits.detect_side)
        except Overloaded:
            raise
        except Exception:
            self.metrics.stream_frames.labels("failed").inc()
            raise
        start = time.perf_counter()
        rows = await self.classify(list(result.crops)) if result.crops else []
        classify_s = time.perf_counter() - start
        boxes = [face.box for face in result.faces]
        tracked = self.tracker.update(boxes, [np.asarray(r) for r in rows], time.monotonic())
        self.processed += 1
        total = time.perf_counter() - received
        self.metrics.stream_frames.labels("processed").inc()
        self.metrics.stream_frame_duration.observe(total)
        width, height = result.photo.size
        faces = []
        for face, row, track in zip(result.faces, rows, tracked, strict=True):
            x, y, w, h = face.clipped(width, height)
            best = int(np.argmax(track.smoothed))
            faces.append({
                "id": track.track_id, "box": {"x": x, "y": y, "width": w, "height": h},
                "detection_score": round(face.score, 4), "expression": self.labels[best],
                "probabilities": _named(self.labels, track.smoothed),
                "raw": _named(self.labels, row), "frames": track.frames})
        ms = {"queue": queued, "decode": result.decode_s, "detect": result.detect_s,
              "crop": result.crop_s, "classify": classify_s, "total": total}
        return {"frame": number, "received": self.frames.received,
                "processed": self.processed, "dropped": self.frames.dropped,
                "image": {"width": width, "height": height}, "faces": faces,
                "timings_ms": {k: round(v * 1000, 2) for k, v in ms.items()}}


def _named(labels: list[str], row: np.ndarray) -> dict[str, float]:
    return {name: round(float(p), 5) for name, p in zip(labels, row, strict=True)}
