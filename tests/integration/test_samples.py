"""``samples/``: the README's photos are what ``python -m training.samples`` makes from their
registry packages, and the shipped models answer each as the README says."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from training.assets import ASSETS
from training.samples import SAMPLES, SAMPLES_DIR, Sample, licences, make

CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_sample_is_made_from_its_source(sample: Sample) -> None:
    committed = (SAMPLES_DIR / sample.name).read_bytes()
    made = make(sample)
    if made != committed:  # another Pillow/libjpeg may encode differently: compare pixels
        difference = np.abs(_pixels(made) - _pixels(committed))
        assert difference.shape and difference.mean() < 0.5 and difference.max() <= 8
    assert len(committed) < 150_000  # small in bytes
    assert sample.asset in ASSETS and sample.licence


def test_licences_name_every_sample() -> None:
    text = (SAMPLES_DIR / "LICENSES.md").read_text()
    assert text == licences()
    files = {p.name for p in SAMPLES_DIR.iterdir()} - {"LICENSES.md"}
    assert files == {s.name for s in SAMPLES}
    for sample in SAMPLES:
        assert f"`{sample.name}`" in text and ASSETS[sample.asset].package in text


@pytest.fixture(scope="module")
def client(make_client: Callable, shipped_repository: Callable[..., Path]) -> Iterator[TestClient]:
    models = shipped_repository("imagenet-mobilenetv2", "mnist-lenet5", "fashion-simple-cnn",
                                "fer-minixception", "face-mtcnn", "face-retinaface")
    with make_client(models) as ready:
        yield ready


def _top(client: TestClient, model: str, name: str) -> str:
    data = (SAMPLES_DIR / name).read_bytes()
    response = client.post(f"/v1/models/{model}/classify", files={"file": (name, data)})
    assert response.status_code == 200, response.text
    return str(response.json()["results"][0]["predictions"][0]["label"])


def test_the_models_recognise_the_samples(client: TestClient) -> None:
    assert _top(client, "imagenet-mobilenetv2", "cat.jpg") in CATS
    assert _top(client, "imagenet-mobilenetv2", "cup.png") == "espresso"
    assert _top(client, "mnist-lenet5", "digit.png") == "7"
    assert _top(client, "fashion-simple-cnn", "shoe.png") == "Ankle boot"
    faces = client.post("/v1/expressions", files={
        "file": ("group.jpg", (SAMPLES_DIR / "group.jpg").read_bytes())}).json()["faces"]
    assert len(faces) == 5 and [f["expression"] for f in faces].count("happy") >= 3
