"""service/faces.py: MTCNN on the shipped ONNX graphs (models/face-mtcnn), on real photos."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from service.faces import MTCNN, DetectorConfig, Face, IntegralImage, eye_angle, face_crop, nms
from training.assets import fetch, sha256_of

# asset -> faces in the photo (counted by eye)
PHOTOS = {"multi-face": 5, "single-face": 1, "face-happy": 1, "face-surprise": 1,
          "face-anger": 1, "face-disgust": 1, "coffee": 0, "rocket": 0}


@pytest.fixture(scope="module")
def mtcnn_dir(shipped_model: Callable[[str], Path]) -> Path:
    return shipped_model("face-mtcnn") / "1"


@pytest.fixture(scope="module")
def detector(mtcnn_dir: Path) -> MTCNN:
    graphs = {}
    for name in ("pnet", "rnet", "onet"):
        session = ort.InferenceSession(str(mtcnn_dir / f"{name}.onnx"),
                                       providers=["CPUExecutionProvider"])
        graphs[name] = lambda x, s=session: s.run(None, {"image": x})
    return MTCNN(graphs)


def rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(fetch(name)).convert("RGB"))


@pytest.mark.parametrize("name", PHOTOS)
def test_finds_every_face_and_nothing_else(detector: MTCNN, name: str) -> None:
    image = rgb(name)
    faces = detector.detect(image)
    assert len(faces) == PHOTOS[name], [f.box for f in faces]
    height, width = image.shape[:2]
    for face in faces:
        x, y, w, h = face.clipped(width, height)
        assert face.score > 0.7 and w >= 20 and h >= 20
        lx, ly = face.landmarks[:2].mean(axis=0)  # between the eyes: inside the box
        assert x < lx < x + w and y < ly < y + h


@pytest.mark.slow
def test_five_faces_are_five_people(detector: MTCNN) -> None:
    faces = detector.detect(rgb("multi-face"))
    boxes = np.array([f.box for f in faces])
    keep = nms(boxes, np.array([f.score for f in faces]), 0.1)
    assert len(keep) == 5  # no two boxes on one face


def test_min_face_size_drops_small_faces(detector: MTCNN) -> None:
    image = rgb("multi-face")  # faces 80-140 px wide
    assert len(detector.detect(image, DetectorConfig(min_face_size=40))) == 5
    assert detector.detect(image, DetectorConfig(min_face_size=300)) == []


def test_tiny_image_has_no_pyramid(detector: MTCNN) -> None:
    assert detector.detect(rgb("face-happy")[::50, ::50]) == []  # 11x11: below one window


def test_area_resample_is_torch_area_interpolation() -> None:
    image = rgb("coffee")
    integral = IntegralImage(image)
    tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].double()
    for top, left, bottom, right, out_h, out_w in [(0, 0, 400, 600, 283, 425),
                                                   (37, 101, 190, 260, 24, 24),
                                                   (5, 9, 17, 30, 48, 48)]:  # upsampling too
        ours = integral.resample(top, left, bottom, right, out_h, out_w)
        crop = tensor[:, :, top:bottom, left:right]
        expected = F.interpolate(crop, size=(out_h, out_w), mode="area")[0].permute(1, 2, 0)
        np.testing.assert_allclose(ours, expected.numpy(), atol=1e-3)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 4, 4]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    # IoU: box 0 overlaps box 1 by 0.68; the small box 3 overlaps the others by < 0.2
    assert nms(boxes, scores, 0.5).tolist() == [3, 1, 2]
    # over the smaller area, box 3 lies (mostly) inside boxes 0 and 1: both go
    assert nms(boxes, scores, 0.5, method="min").tolist() == [3, 2]


def test_shipped_graphs_match_pytorch_and_their_sha256(mtcnn_dir: Path) -> None:
    from training.mtcnn import DetectorGraph, load_network, output_names

    meta = json.loads((mtcnn_dir / "model.json").read_text())
    assert meta["task"] == "face-detection"
    assert set(meta["files"]) == {"pnet", "rnet", "onet"}
    image = rgb("multi-face").astype(np.float32)
    for name, filename in meta["files"].items():
        assert sha256_of(mtcnn_dir / filename) == meta["onnx_sha256"][filename]
        batch = image[None, 200:420, 500:650] if name == "pnet" else np.stack(
            [image[y:y + size, x:x + size] for size in [{"rnet": 24, "onet": 48}[name]]
             for y, x in [(240, 320), (300, 540), (0, 0)]])
        session = ort.InferenceSession(str(mtcnn_dir / filename),
                                       providers=["CPUExecutionProvider"])
        got = session.run(output_names(name), {"image": batch})
        with torch.inference_mode():
            want = DetectorGraph(load_network(name))(torch.from_numpy(batch))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4)


def _rotated(image: Image.Image, degrees: float) -> Image.Image:
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True,
                        fillcolor=(128, 128, 128))


def test_landmarks_follow_a_turned_face_and_the_crop_levels_it(detector: MTCNN) -> None:
    photo = Image.open(fetch("face-happy")).convert("RGB")
    turned = _rotated(photo, 15)  # counter-clockwise
    upright_face = detector.detect(np.asarray(photo))[0]
    turned_face = detector.detect(np.asarray(turned))[0]
    assert eye_angle(turned_face) - eye_angle(upright_face) == pytest.approx(15, abs=4)
    reference = np.asarray(face_crop(photo, upright_face, (64, 64)).convert("L"), float)
    aligned = np.asarray(face_crop(turned, turned_face, (64, 64)).convert("L"), float)
    unaligned = np.asarray(face_crop(turned, turned_face, (64, 64), align=False).convert("L"),
                           float)

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert corr(reference, aligned) > 0.9
    assert corr(reference, aligned) > corr(reference, unaligned) + 0.05


def test_crop_at_the_border_keeps_its_size_and_the_face() -> None:
    photo = Image.open(fetch("face-happy")).convert("L")
    width, height = photo.size
    face = Face(box=(-40.0, 300.0, 120.0, height + 30.0), score=1.0,
                landmarks=np.array([[0, 380], [60, 380], [30, 420], [10, 450], [50, 450]], float))
    crop = face_crop(photo, face, (48, 48))
    assert crop.size == (48, 48) and crop.mode == "L"
    inner = face_crop(photo, Face((10.0, 320.0, 110.0, 420.0), 1.0, face.landmarks), (48, 48),
                      margin=0.0, align=False)
    expected = photo.resize((48, 48), Image.Resampling.BILINEAR, box=(10, 320, 110, 420))
    assert np.abs(np.asarray(inner, float) - np.asarray(expected, float)).max() <= 1
