"""service/detection.py: detection on a bounded copy (real photos, shipped MTCNN), and slots."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.detection import DetectionSlots, detect_bounded, working_scale
from service.errors import Overloaded
from service.faces import MTCNN, DetectorConfig
from training.assets import fetch


@pytest.fixture(scope="module")
def detector(shipped_model: Callable[[str], Path]) -> MTCNN:
    graphs = {}
    for name in ("pnet", "rnet", "onet"):
        session = ort.InferenceSession(str(shipped_model("face-mtcnn") / "1" / f"{name}.onnx"),
                                       providers=["CPUExecutionProvider"])
        graphs[name] = lambda x, s=session: s.run(None, {"image": x})
    return MTCNN(graphs)


@pytest.mark.parametrize(("size", "min_face", "max_side", "scale"), [
    ((1000, 667), 20, 2000, 1.0),  # small enough: the photo itself
    ((7000, 7000), 20, 2000, 2000 / 7000),  # the cap
    ((3200, 1862), 200, 2000, 48 / 200),  # big faces only: shrunk to O-Net's 48 px
    ((3200, 1862), 20, 1600, 0.5),
])
def test_working_scale(size: tuple[int, int], min_face: int, max_side: int,
                       scale: float) -> None:
    assert working_scale(size, min_face, max_side) == pytest.approx(scale)


def test_small_photo_is_detected_as_is(detector: MTCNN) -> None:
    photo = Image.open(fetch("multi-face")).convert("RGB")
    direct = detector.detect(np.asarray(photo))
    bounded = detect_bounded(detector, photo, DetectorConfig(), max_side=2000)
    assert [f.box for f in bounded] == [f.box for f in direct]


def test_big_photo_finds_the_same_faces_in_its_own_pixels(detector: MTCNN) -> None:
    """The real 5-face photo at 3x (3000x2001): detected on a 1000-px copy, the five boxes come
    back at 3x the boxes found in the photo itself."""
    photo = Image.open(fetch("multi-face")).convert("RGB")
    big = photo.resize((photo.width * 3, photo.height * 3), Image.Resampling.LANCZOS)
    reference = sorted(detector.detect(np.asarray(photo)), key=lambda f: f.box[0])
    found = sorted(detect_bounded(detector, big, DetectorConfig(min_face_size=60), 1000),
                   key=lambda f: f.box[0])
    assert len(found) == len(reference) == 5
    for face, ref in zip(found, reference, strict=True):
        side = ref.box[2] - ref.box[0]
        np.testing.assert_allclose(np.array(face.box) / 3, ref.box, atol=0.15 * side)
        np.testing.assert_allclose(face.landmarks / 3, ref.landmarks, atol=0.15 * side)


def test_slots_refuse_past_the_limit_with_retry_after() -> None:
    async def main() -> None:
        slots = DetectionSlots(threads=1, max_pending=2, retry_after_s=3)
        release = threading.Event()
        running = [asyncio.ensure_future(slots.run(release.wait)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as caught:
            await slots.run(lambda: None)
        assert caught.value.status_code == 503
        assert caught.value.headers == {"Retry-After": "3"}
        assert caught.value.message.startswith(
            "face detection is full: 1 running and 1 waiting, the most allowed "
            "(CONVSERVE_MAX_PENDING_DETECTIONS=2)")
        release.set()
        assert await asyncio.gather(*running) == [True, True]
        assert await slots.run(lambda: 7) == 7  # room again
        slots.shutdown()

    asyncio.run(main())


def test_detections_past_the_threads_wait_their_turn_in_order(detector: MTCNN) -> None:
    """Eight at once on one thread (the issue's eight clients): none refused, each photo's own
    faces, served in arrival order."""
    photos = [Image.open(fetch(name)).convert("RGB") for name in
              ("multi-face", "single-face", "multi-face", "face-happy") * 2]
    finished: list[int] = []

    def detect(index: int) -> int:
        faces = detect_bounded(detector, photos[index], DetectorConfig(), max_side=1600)
        finished.append(index)
        return len(faces)

    async def main() -> list[int]:
        slots = DetectionSlots(threads=1, max_pending=32, retry_after_s=1)
        try:
            return await asyncio.gather(*(slots.run(detect, i) for i in range(8)))
        finally:
            slots.shutdown()

    assert asyncio.run(main()) == [5, 1, 5, 1] * 2
    assert finished == list(range(8))


def test_the_limit_is_never_below_the_threads() -> None:
    assert DetectionSlots(threads=4, max_pending=1, retry_after_s=1).max_pending == 4
