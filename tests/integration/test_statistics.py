"""Triton's statistics extension over HTTP: ``GET /v2/models[/{name}[/versions/{v}]]/stats``.

Real requests (``/v2`` infer, ``/v1`` classify, a refused one) on a real app over the tiny
models; the figures are the ``/metrics`` series', in Triton's shape (tritonclient reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import MakeClient, read_metric
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(make_client: MakeClient, tiny_models: Path) -> Iterator[TestClient]:
    with make_client(tiny_models) as client:
        yield client


def _infer(client: TestClient, batch: int, **extra: object) -> int:
    pixels = np.zeros((batch, 32, 32, 3), np.uint8).ravel().tolist()
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [batch, 32, 32, 3],
                        "data": pixels}], **extra}
    return client.post("/v2/models/tiny-rgb/infer", json=body).status_code


def _stats(client: TestClient, path: str) -> list[dict]:
    response = client.get(path)
    assert response.status_code == 200, response.text
    return response.json()["model_stats"]


def test_statistics_follow_the_requests(client: TestClient,
                                        photo: Callable[[str], bytes]) -> None:
    assert _infer(client, 2) == 200
    assert _infer(client, 1) == 200
    assert _infer(client, 1, outputs=[{"name": "logits"}]) == 400  # read, then refused
    classify = client.post("/v1/models/tiny-rgb/classify",
                           files={"file": ("c.jpg", photo("chelsea"))})
    assert classify.status_code == 200
    (stats,) = _stats(client, "/v2/models/tiny-rgb/versions/2/stats")
    assert (stats["name"], stats["version"]) == ("tiny-rgb", "2")
    assert stats["inference_count"] == 4 == read_metric(
        client, "convserve_inference_count_total", model="tiny-rgb", version="2")
    assert stats["execution_count"] == read_metric(
        client, "convserve_inference_exec_count_total", model="tiny-rgb", version="2")
    infer = stats["inference_stats"]
    assert infer["success"]["count"] == 2 and infer["fail"]["count"] == 1
    assert infer["success"]["ns"] > infer["compute_infer"]["ns"] / stats["execution_count"]
    assert infer["queue"]["count"] == 4  # each image waited in the queue, /v1's included
    assert infer["compute_input"]["count"] == 3  # two tensors read (the refused one is not
    # timed) and one image decoded
    assert infer["compute_output"]["count"] == 2
    sizes = {entry["batch_size"]: entry["compute_infer"] for entry in stats["batch_stats"]}
    assert sum(size * entry["count"] for size, entry in sizes.items()) == 4
    assert sum(entry["ns"] for entry in sizes.values()) == infer["compute_infer"]["ns"]
    assert stats["last_inference"] > 1.7e12  # milliseconds since the epoch


def test_statistics_of_every_version_and_model(client: TestClient) -> None:
    versions = _stats(client, "/v2/models/tiny-rgb/stats")
    assert sorted(s["version"] for s in versions) == ["1", "2"]
    unused = next(s for s in versions if s["version"] == "1")
    assert unused["inference_count"] == 0 and unused["batch_stats"] == []
    assert unused["inference_stats"]["success"] == {"count": 0, "ns": 0}
    names = {s["name"] for s in _stats(client, "/v2/models/stats")}
    assert {"tiny-rgb", "tiny-grey", "tiny-faces"} <= names


def test_unknown_models_are_404_in_the_protocols_shape(client: TestClient) -> None:
    for path in ("/v2/models/nope/stats", "/v2/models/tiny-rgb/versions/9/stats"):
        response = client.get(path)
        assert response.status_code == 404 and set(response.json()) == {"error"}
    meta = client.get("/v2").json()
    assert meta["extensions"] == ["binary_tensor_data", "classification", "statistics"]
