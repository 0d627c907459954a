"""``POST /v1/models/{name}/explain`` on the shipped models: maps that point at the object.

Boxes are hand-drawn on the photos (pixels of the photo as stored, left, top, right, bottom):
the test passes when the map's hottest place for the top class lies inside the object.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from training.assets import fetch

# Hand-drawn object boxes, (left, top, right, bottom) in the photo's pixels.
BOXES = {
    "chelsea": (40, 0, 380, 300),  # the cat's head (451 x 300)
    "coffee": (170, 15, 415, 240),  # the cup, without the saucer (600 x 400)
    "squirrel": (130, 115, 365, 365),  # the squirrel, tail included (535 x 426)
}
# Faces, forehead to chin (as MTCNN boxes them), in the photos as stored.
FACES = {
    "face-happy": (110, 105, 384, 484),
    "face-surprise": (119, 100, 395, 474),
    "face-anger": (92, 131, 375, 481),
    "single-face": (191, 145, 373, 402),
}


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _inside(point: dict[str, float], box: tuple[float, float, float, float]) -> bool:
    return box[0] <= point["x"] <= box[2] and box[1] <= point["y"] <= box[3]


@pytest.fixture(scope="module")
def client(make_client: Callable[..., object], shipped_repository: Callable[..., Path]
           ) -> Iterator[TestClient]:
    root = shipped_repository("imagenet-mobilenetv2", "imagenet-efficientnet-lite0",
                              "fer-minixception", "mnist-lenet5", "face-mtcnn")
    with make_client(root) as ready:  # type: ignore[attr-defined]
        yield ready


def explain(client: TestClient, name: str, data: bytes, **params: str) -> dict:
    response = client.post(f"/v1/models/{name}/explain", params=params,
                           files={"file": ("photo.png", data)})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("model", ["imagenet-mobilenetv2", "imagenet-efficientnet-lite0"])
@pytest.mark.parametrize("photo", sorted(BOXES))
def test_cam_peaks_inside_the_object(client: TestClient, model: str, photo: str) -> None:
    body = explain(client, model, fetch(photo).read_bytes())
    assert body["method"] == "cam"
    assert body["cost"] == {"runs": 2, "images": 1}
    assert body["explained"] == body["predictions"][0]  # default: the top-1
    assert _inside(body["peak"], BOXES[photo]), (body["peak"], body["explained"])
    grid = np.array(body["grid"])
    width, height = body["image"]["width"], body["image"]["height"]
    assert grid.shape == (round(32 * height / width), 32) and 0 <= grid.min() and grid.max() <= 1
    # The grid is aligned to the photo: its hottest cell is inside the box too.
    row, column = np.unravel_index(int(np.argmax(grid)), grid.shape)
    cell = {"x": (column + 0.5) * width / grid.shape[1], "y": (row + 0.5) * height / grid.shape[0]}
    assert _inside(cell, BOXES[photo]), cell


@pytest.mark.parametrize("photo", sorted(BOXES))
def test_occlusion_of_a_photo_peaks_inside_the_object(client: TestClient, photo: str) -> None:
    body = explain(client, "imagenet-mobilenetv2", fetch(photo).read_bytes(), method="occlusion")
    assert body["method"] == "occlusion" and body["cost"]["images"] == 65
    assert 5 <= body["cost"]["runs"] <= 65  # queued in the batcher: its batch size a run
    assert _inside(body["peak"], BOXES[photo]), (body["peak"], body["explained"])


def test_the_map_follows_the_class(client: TestClient) -> None:
    """A cat top-left and an espresso bottom-right: each class's map peaks on its own object."""
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))
    canvas.paste(Image.open(fetch("chelsea")).convert("RGB").crop((40, 0, 340, 300))
                 .resize((224, 224)), (0, 0))
    canvas.paste(Image.open(fetch("coffee")).convert("RGB").crop((150, 0, 450, 300))
                 .resize((224, 224)), (224, 224))
    data = _png(canvas)
    cat = explain(client, "imagenet-mobilenetv2", data, **{"class": "Egyptian cat"})
    cup = explain(client, "imagenet-mobilenetv2", data, **{"class": "967"})  # espresso
    assert cat["explained"]["label"] == "Egyptian cat" and cup["explained"]["label"] == "espresso"
    assert _inside(cat["peak"], (0, 0, 224, 224)), cat["peak"]
    assert _inside(cup["peak"], (224, 224, 448, 448)), cup["peak"]
    by_label = explain(client, "imagenet-mobilenetv2", data, **{"class": "espresso"})
    assert by_label["grid"] == cup["grid"]


@pytest.mark.parametrize("photo", sorted(FACES))
def test_expression_map_peaks_inside_the_face(client: TestClient, photo: str) -> None:
    """The face cut as the service cuts it (20% margin a side): the map for the top expression
    peaks inside the face. fer-minixception's default is occlusion (its 4x4 class activation
    maps peak on the margin: docs/explain.md)."""
    left, top, right, bottom = FACES[photo]
    margin_x, margin_y = 0.2 * (right - left), 0.2 * (bottom - top)
    image = Image.open(fetch(photo)).convert("RGB")
    box = (max(0, round(left - margin_x)), max(0, round(top - margin_y)),
           min(image.width, round(right + margin_x)), min(image.height, round(bottom + margin_y)))
    body = explain(client, "fer-minixception", _png(image.crop(box)))
    assert body["method"] == "occlusion" and body["cost"]["images"] == 65
    face = (left - box[0], top - box[1], right - box[0], bottom - box[1])
    assert _inside(body["peak"], face), (body["peak"], face, body["explained"])
    cam = explain(client, "fer-minixception", _png(image.crop(box)), method="cam")
    assert cam["method"] == "cam" and cam["explained"] == body["explained"]


def test_occlusion_finds_the_digit(client: TestClient) -> None:
    """LeNet-5 (fully connected head) is explained by occlusion: a real MNIST digit in the
    bottom-right quarter of a black picture; hiding the digit is what lowers its score."""
    with gzip.open(fetch("mnist-pkl"), "rb") as handle:
        _, _, (images, labels) = pickle.load(handle, encoding="latin1")
    digit = np.clip(np.rint(images[0] * 256), 0, 255).astype(np.uint8).reshape(28, 28)
    canvas = np.zeros((56, 56), np.uint8)
    canvas[24:52, 24:52] = digit
    body = explain(client, "mnist-lenet5", _png(Image.fromarray(canvas)), **{"class": str(
        labels[0])})
    assert body["method"] == "occlusion"
    assert body["cost"]["images"] == 65
    assert _inside(body["peak"], (24, 24, 52, 52)), body["peak"]


def test_png_blends_the_map_over_the_photo(client: TestClient) -> None:
    data = fetch("coffee").read_bytes()
    response = client.post("/v1/models/imagenet-mobilenetv2/versions/1/explain",
                           params={"format": "png"}, files={"file": ("coffee.png", data)})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), np.float32)
    photo = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
    assert shown.shape == photo.shape
    change = np.abs(shown - photo).sum(axis=2)
    left, top, right, bottom = BOXES["coffee"]
    inside = change[top:bottom, left:right].mean()
    assert inside > 20 and change[:, :100].mean() < 1  # outside the centre crop: untouched


@pytest.mark.parametrize(("name", "params", "files", "status", "code", "message"), [
    ("face-mtcnn", {}, 1, 422, "unsupported_task", "model 'face-mtcnn' (face-detection) "
     "cannot explain its answers"),
    ("imagenet-mobilenetv2", {"class": "giraffe-ish"}, 1, 422, "invalid_parameter",
     "class: no class labelled 'giraffe-ish'"),
    ("imagenet-mobilenetv2", {"class": "1000"}, 1, 422, "invalid_parameter",
     "class: index 1000 is out of range; this model has 1000 classes"),
    ("imagenet-mobilenetv2", {}, 2, 422, "invalid_parameter", "explain takes one image per "
     "request, not 2"),
    ("imagenet-mobilenetv2", {"format": "gif"}, 1, 422, "invalid_parameter", "format"),
    ("mnist-lenet5", {"method": "cam"}, 1, 422, "invalid_parameter", "method: model "
     "'mnist-lenet5' cannot explain by 'cam' (its graph has no class activation maps); it can "
     "by: occlusion"),
    ("no-such-model", {}, 1, 404, "model_not_found", "no model named 'no-such-model'"),
])
def test_errors(client: TestClient, name: str, params: dict[str, str], files: int,
                status: int, code: str, message: str) -> None:
    data = fetch("chelsea").read_bytes()
    response = client.post(f"/v1/models/{name}/explain", params=params,
                           files=[("file", (f"{i}.png", data)) for i in range(files)])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"], error


def test_bad_image_is_a_400(client: TestClient) -> None:
    response = client.post("/v1/models/imagenet-mobilenetv2/explain",
                           files={"file": ("x.png", b"\x89PNG\r\n\x1a\n" + b"0" * 40)})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"


def test_models_list_says_how_each_explains(client: TestClient) -> None:
    models = {m["name"]: m["versions"][0] for m in client.get("/v1/models").json()["models"]}
    assert models["imagenet-mobilenetv2"]["explain"] == ["cam", "occlusion"]
    assert models["fer-minixception"]["explain"] == ["occlusion", "cam"]
    assert models["mnist-lenet5"]["explain"] == ["occlusion"]
    assert models["face-mtcnn"]["explain"] == []


def test_first_layer_filters_are_the_onnx_weights(client: TestClient) -> None:
    import onnx
    from onnx import numpy_helper

    body = client.get("/v1/models/imagenet-mobilenetv2/first-layer").json()
    assert body["shape"] == [32, 3, 3, 3] and body["stride"] == [2, 2]
    assert body["activation"] == "Clip" and body["feature_maps"] == []
    graph = onnx.load(str(Path(__file__).resolve().parents[2] / "models" /
                          "imagenet-mobilenetv2" / "1" / "model.onnx")).graph
    conv = next(n for n in graph.node if n.op_type == "Conv")
    weight = numpy_helper.to_array(next(i for i in graph.initializer if i.name == conv.input[1]))
    filters = np.array(body["filters"])  # [filters, kh, kw, channels], 0.5 = zero weight
    recovered = (filters - 0.5).transpose(0, 3, 1, 2)
    scale = np.abs(weight).reshape(32, -1).max(axis=1)[:, None, None, None]
    np.testing.assert_allclose(recovered * 2 * scale, weight, atol=1e-3 * scale.max())


def test_first_layer_maps_light_up_on_the_digit(client: TestClient) -> None:
    """LeNet-5's strongest first-layer map of a digit on black is bright on the digit only."""
    with gzip.open(fetch("mnist-pkl"), "rb") as handle:
        _, _, (images, _) = pickle.load(handle, encoding="latin1")
    digit = np.clip(np.rint(images[0] * 256), 0, 255).astype(np.uint8).reshape(28, 28)
    response = client.post("/v1/models/mnist-lenet5/first-layer", params={"count": 3},
                           files={"file": ("digit.png", _png(Image.fromarray(digit)))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["shape"] == [6, 1, 5, 5] and body["map_size"] == [28, 28]
    means = [m["mean"] for m in body["feature_maps"]]
    assert len(means) == 3 and means == sorted(means, reverse=True)
    import base64

    strongest = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        body["feature_maps"][0]["image"].split(",", 1)[1]))))
    near_ink = _dilate(digit > 0, 4)  # a 5x5 kernel reaches 2 pixels each way (L1 4)
    bright = strongest > 128
    assert near_ink.mean() < 0.6 and bright.any() and not (bright & ~near_ink).any()


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    grown = mask.copy()
    for _ in range(steps):
        padded = np.pad(grown, 1)
        grown = (padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2]
                 | padded[1:-1, 2:])
    return grown


def test_first_layer_errors(client: TestClient) -> None:
    response = client.get("/v1/models/face-mtcnn/first-layer")
    assert response.status_code == 422 and response.json()["error"] == {
        "code": "unsupported_task", "message": "model 'face-mtcnn' (face-detection) has no first "
        "convolution to show: only classifiers have one"}
    response = client.post("/v1/models/mnist-lenet5/first-layer", params={"count": 99},
                           files={"file": ("x.png", fetch("chelsea").read_bytes())})
    assert response.status_code == 422 and "count" in response.json()["error"]["message"]
