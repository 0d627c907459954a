"""Every model shipped under models/ loads in ONNX Runtime and answers sensibly (no torch).

Classifiers: ``model.onnx`` matches ``onnx_sha256``, the graph takes ``image`` uint8 NHWC of the
size ``model.json`` gives, outputs one probability row per image (batch 1 and 3) summing to 1.
The ImageNet classifiers are checked on real photos, resized as ``model.json`` says
(shorter side, centre crop) with Pillow.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from training.assets import fetch

MODELS = Path(__file__).resolve().parents[2] / "models"
IMAGENET = ("imagenet-mobilenetv2", "imagenet-efficientnet-lite0")
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "nearest": Image.Resampling.NEAREST, "area": Image.Resampling.BOX}


def _versions() -> list[Path]:
    return sorted(p.parent for p in MODELS.glob("*/*/model.json"))


def _meta(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "model.json").read_text())


def _classifiers() -> list[Path]:
    return [d for d in _versions() if _meta(d).get("task") != "face-detection"]


def _session(directory: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(directory / "model.onnx"),
                                providers=["CPUExecutionProvider"])


def _prepare(photo: str, spec: dict[str, Any]) -> np.ndarray:
    """A real photo as the service would feed it: RGB/grey, resized as ``input.resize`` says."""
    image = Image.open(io.BytesIO(fetch(photo).read_bytes()))
    image = image.convert("L" if spec["channels"] == 1 else "RGB")
    resize = spec["resize"]
    height, width = spec["height"], spec["width"]
    resample = FILTERS[resize.get("interpolation", "bilinear")]
    if resize["method"] == "shorter-side-center-crop":
        scale = resize["shorter_side"] / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), resample)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    else:
        image = image.resize((width, height), resample)
    return np.asarray(image, dtype=np.uint8).reshape(height, width, spec["channels"])


def test_models_are_shipped() -> None:
    names = {d.parent.name for d in _versions()}
    assert set(IMAGENET) <= names, names


@pytest.mark.parametrize("directory", _versions(), ids=lambda d: f"{d.parent.name}/{d.name}")
def test_sha256_matches_model_json(directory: Path) -> None:
    meta = _meta(directory)
    expected = meta["onnx_sha256"]
    if isinstance(expected, str):
        expected = {"model.onnx": expected}
    for filename, digest in expected.items():
        assert hashlib.sha256((directory / filename).read_bytes()).hexdigest() == digest
    assert meta["name"] == directory.parent.name and str(meta["version"]) == directory.name


@pytest.mark.parametrize("directory", _classifiers(), ids=lambda d: f"{d.parent.name}/{d.name}")
def test_classifier_graph_and_probabilities(directory: Path) -> None:
    meta = _meta(directory)
    spec = meta["input"]
    session = _session(directory)
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "image" and graph_input.type == "tensor(uint8)"
    assert graph_input.shape[1:] == [spec["height"], spec["width"], spec["channels"]]
    assert isinstance(graph_input.shape[0], str)  # dynamic batch
    photos = np.stack([_prepare(name, spec) for name in ("chelsea", "coffee", "astronaut")])
    for batch in (photos[:1], photos):
        (probs,) = session.run(["probabilities"], {"image": batch})
        assert probs.dtype == np.float32 and probs.shape == (len(batch), len(meta["labels"]))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert (probs >= 0).all()
    single = session.run(["probabilities"], {"image": photos[2:3]})[0]
    np.testing.assert_allclose(single[0], probs[2], atol=1e-5)  # rows are independent


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_classifier_on_real_photos(name: str) -> None:
    (directory,) = sorted((MODELS / name).glob("*/model.json"))[-1:]
    meta = _meta(directory.parent)
    assert len(meta["labels"]) == 1000 and meta["metrics"]["reported"]["top1"] > 0.7
    session = _session(directory.parent)
    photos = ("chelsea", "coffee", "squirrel", "messi")
    batch = np.stack([_prepare(p, meta["input"]) for p in photos])
    (probs,) = session.run(["probabilities"], {"image": batch})
    top5 = [[meta["labels"][i] for i in np.argsort(-row)[:5]] for row in probs]
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(top5[0]), top5[0]
    assert {"espresso", "cup", "coffee mug"} & set(top5[1]), top5[1]
    assert top5[2][0] == "fox squirrel", top5[2]
    assert top5[3][0] == "soccer ball", top5[3]


def _mnist_test() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(fetch("mnist-pkl"), "rb") as handle:
        _, _, (images, labels) = pickle.load(handle, encoding="latin1")
    pixels = np.clip(np.rint(images * 256), 0, 255).astype(np.uint8)  # stored as k/256
    return pixels.reshape(-1, 28, 28), labels


def _fashion_test() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(fetch("fashion-mnist-test-images")) as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(fetch("fashion-mnist-test-labels")) as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8)
    return images, labels


@pytest.mark.slow
@pytest.mark.parametrize(("name", "load", "floor"), [
    ("mnist-lenet5", _mnist_test, 0.985), ("fashion-mobilenetv2", _fashion_test, 0.92),
    ("fashion-simple-cnn", _fashion_test, 0.9)])
def test_trained_model_on_real_test_images(name: str, load: Any, floor: float) -> None:
    """1,000 test images, resized as model.json says, classified in ONNX Runtime."""
    found = sorted((MODELS / name).glob("*/model.json"))
    if not found:
        pytest.skip(f"models/{name} is not shipped")
    meta = _meta(found[-1].parent)
    spec = meta["input"]
    images, labels = load()
    resample = FILTERS[spec["resize"].get("interpolation", "bilinear")]
    batch = np.stack([
        np.asarray(Image.fromarray(image).resize((spec["width"], spec["height"]), resample))
        for image in images[:1000]])[..., None]
    (probs,) = _session(found[-1].parent).run(["probabilities"], {"image": batch})
    top1 = float((probs.argmax(axis=1) == labels[:1000]).mean())
    assert top1 >= floor, top1
    assert abs(top1 - meta["metrics"]["measured"]["top1"]) < 0.03  # agrees with model.json
