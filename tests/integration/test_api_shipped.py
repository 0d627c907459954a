"""The service on the models shipped in models/ (copied to a temporary models dir)."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from training.assets import fetch

SHIPPED = Path(__file__).resolve().parents[2] / "models"


def _shipped(name: str) -> bool:
    return any((SHIPPED / name).glob("*/model.json"))


@pytest.fixture(scope="module")
def shipped_client(make_client: Callable[..., Any],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    names = [p.name for p in SHIPPED.iterdir() if p.is_dir() and _shipped(p.name)] \
        if SHIPPED.is_dir() else []
    if not names:
        pytest.skip("no model shipped under models/ yet")
    root = tmp_path_factory.mktemp("shipped")
    for name in names:
        shutil.copytree(SHIPPED / name, root / name)
    with make_client(root) as client:
        yield client


def _top(client: TestClient, model: str, data: bytes, k: int = 5) -> list[str]:
    response = client.post(f"/v1/models/{model}/classify", files={"file": ("x", data)},
                           params={"top_k": k})
    assert response.status_code == 200, response.text
    return [p["label"] for p in response.json()["results"][0]["predictions"]]


def test_every_shipped_model_loads_and_answers(shipped_client: TestClient,
                                               photo: Callable[[str], bytes]) -> None:
    assert shipped_client.get("/readyz").status_code == 200
    for model in shipped_client.get("/v1/models").json()["models"]:
        latest = model["versions"][0]
        assert latest["provider"] in latest["providers"]
        if latest["task"] == "face-detection":
            continue
        assert latest["num_classes"] == len(latest["labels"]) > 1
        top = _top(shipped_client, model["name"], photo("face-happy"), 3)
        assert len(top) == 3 and set(top) <= set(latest["labels"])


def test_imagenet_classifier_on_real_photos(shipped_client: TestClient,
                                            photo: Callable[[str], bytes]) -> None:
    if not _shipped("imagenet-mobilenetv2"):
        pytest.skip("models/imagenet-mobilenetv2 is not shipped yet")
    cat = _top(shipped_client, "imagenet-mobilenetv2", photo("chelsea"), 3)
    assert any("cat" in label.lower() for label in cat), cat
    cup = _top(shipped_client, "imagenet-mobilenetv2", photo("coffee"), 5)
    assert any(word in " ".join(cup).lower() for word in ("espresso", "cup", "coffee")), cup
    rgba = _top(shipped_client, "imagenet-mobilenetv2", photo("rgba-png"), 5)
    assert len(rgba) == 5


@pytest.mark.parametrize("model", ["imagenet-mobilenetv2", "imagenet-efficientnet-lite0"])
def test_service_matches_the_exporters_own_check(shipped_client: TestClient,
                                                 photo: Callable[[str], bytes],
                                                 model: str) -> None:
    """model.json's `sanity` block holds top-3 answers the exporter computed with torchvision's
    preprocessing; the service (its own decoding and resizing) must agree."""
    if not _shipped(model):
        pytest.skip(f"models/{model} is not shipped yet")
    meta = json.loads(sorted((SHIPPED / model).glob("*/model.json"))[-1].read_text())
    checks = (meta.get("sanity") or {}).get("photos") or {}
    if not checks:
        pytest.skip(f"{model}'s model.json has no sanity answers")
    for name, check in checks.items():
        response = shipped_client.post(f"/v1/models/{model}/classify", params={"top_k": 3},
                                       files={"file": (name, photo(name))})
        got = response.json()["results"][0]["predictions"]
        expected_label, expected_score = check["top3"][0]
        assert got[0]["label"] == expected_label, (name, got, check["top3"])
        assert abs(got[0]["score"] - expected_score) < 0.05, (name, got, check["top3"])


def test_digit_classifier_on_real_digits(shipped_client: TestClient) -> None:
    if not _shipped("mnist-lenet5"):
        pytest.skip("models/mnist-lenet5 is not shipped yet")
    with gzip.open(fetch("mnist-pkl"), "rb") as handle:
        _, _, (images, labels) = pickle.load(handle, encoding="latin1")
    files, truth = [], []
    for i in range(0, 2000, 100):  # 20 test digits, as 28x28 grey PNGs
        out = io.BytesIO()
        Image.fromarray((images[i].reshape(28, 28) * 255).astype(np.uint8)).save(out, "PNG")
        files.append(("file", (f"{i}.png", out.getvalue())))
        truth.append(int(labels[i]))
    response = shipped_client.post("/v1/models/mnist-lenet5/classify", files=files,
                                   params={"top_k": 1})
    assert response.status_code == 200, response.text
    got = [r["predictions"][0]["index"] for r in response.json()["results"]]
    assert sum(g == t for g, t in zip(got, truth, strict=True)) >= 18, (got, truth)


def test_face_detector_is_listed_but_not_a_classifier(shipped_client: TestClient,
                                                      photo: Callable[[str], bytes]) -> None:
    detectors = [m for m in shipped_client.get("/v1/models").json()["models"]
                 if m["versions"][0]["task"] == "face-detection"]
    if not detectors:
        pytest.skip("no face detector shipped yet")
    name = detectors[0]["name"]
    assert detectors[0]["versions"][0]["files"]
    response = shipped_client.post(f"/v1/models/{name}/classify",
                                   files={"file": ("f.jpg", photo("single-face"))})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unsupported_task"
