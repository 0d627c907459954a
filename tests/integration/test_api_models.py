"""GET /v1/models, health, readiness, metrics, request ids and access logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient


def test_list_models(tiny_client: TestClient) -> None:
    response = tiny_client.get("/v1/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert sorted(models) == ["tiny-faces", "tiny-grey", "tiny-layout", "tiny-rgb"]
    rgb = models["tiny-rgb"]
    assert rgb["default_version"] == 2 and [v["version"] for v in rgb["versions"]] == [2, 1]
    latest = rgb["versions"][0]
    assert latest["task"] == "classification" and latest["num_classes"] == 10
    assert latest["labels"][3] == "tiny-rgb-class-3"
    assert latest["input"]["resize"] == {"method": "shorter-side-center-crop",
                                         "shorter_side": 36, "interpolation": "bilinear"}
    assert latest["provider"] == "CPUExecutionProvider" == latest["providers"][0]
    assert latest["load_seconds"] > 0
    # No serving.json: batches of up to CONVSERVE_MAX_BATCH_SIZE, the same on every load.
    assert latest["max_batch_size"] == 4 and latest["batch_costs_ms"] == {}
    faces = models["tiny-faces"]["versions"][0]
    assert faces["task"] == "face-detection" and faces["files"] == {"pnet": "pnet.onnx"}
    assert faces["max_batch_size"] is None and faces["batch_costs_ms"] == {}


def test_one_model_and_version(tiny_client: TestClient) -> None:
    grey = tiny_client.get("/v1/models/tiny-grey").json()
    assert grey["versions"][0]["input"]["channels"] == 1
    version = tiny_client.get("/v1/models/tiny-rgb/versions/1").json()
    assert version["version"] == 1 and version["name"] == "tiny-rgb"


def test_health(tiny_client: TestClient) -> None:
    ready = tiny_client.get("/readyz")
    assert ready.status_code == 200
    # Liveness lists what is loaded too: it must not look as if the models were lost.
    assert tiny_client.get("/healthz").json() == {"status": "alive",
                                                  "models": ready.json()["models"]}
    assert "tiny-rgb/2" in ready.json()["models"] and "tiny-faces/1" in ready.json()["models"]


def test_metrics_after_a_request(tiny_client: TestClient, photo: Callable[[str], bytes],
                                 metric: Callable[..., float]) -> None:
    route = "/v1/models/{name}/classify"
    model = {"model": "tiny-grey", "version": "1"}
    before = {name: metric(tiny_client, name, **model) for name in (
        "convserve_decode_duration_seconds_count", "convserve_inference_count_total")}
    ok = metric(tiny_client, "convserve_requests_total", route=route, status="200")
    tiny_client.post("/v1/models/tiny-grey/classify", files=[
        ("file", ("a.png", photo("chelsea"))), ("file", ("b.jpg", photo("rocket")))])
    tiny_client.post("/v1/models/tiny-grey/classify", params={"top_k": 0},
                     files={"file": ("a.png", photo("chelsea"))})
    assert metric(tiny_client, "convserve_requests_total", route=route, status="200") == ok + 1
    assert metric(tiny_client, "convserve_requests_total", route=route, status="422") >= 1
    assert metric(tiny_client, "convserve_decode_duration_seconds_count", **model) == \
        before["convserve_decode_duration_seconds_count"] + 2
    assert metric(tiny_client, "convserve_inference_count_total", **model) == \
        before["convserve_inference_count_total"] + 2
    for name in ("convserve_preprocess_duration_seconds_count",
                 "convserve_queue_duration_seconds_count",
                 "convserve_inference_duration_seconds_count", "convserve_batch_size_count",
                 "convserve_model_load_duration_seconds"):
        assert metric(tiny_client, name, **model) > 0, name
    assert metric(tiny_client, "convserve_request_duration_seconds_count", route=route) >= 2
    assert metric(tiny_client, "convserve_model_info", **model,
                  provider="CPUExecutionProvider", task="classification") == 1
    assert "convserve_queue_depth" in tiny_client.get("/metrics").text


def test_request_id_is_echoed_or_made(tiny_client: TestClient) -> None:
    assert tiny_client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers[
        "x-request-id"] == "abc-123"
    made = [tiny_client.get("/healthz").headers["x-request-id"] for _ in range(3)]
    assert len(set(made)) == 3  # a new id for every request without one
    bad = tiny_client.get("/healthz", headers={"X-Request-ID": "two words"})
    replaced = bad.headers["x-request-id"]
    assert replaced != "two words" and replaced not in made and len(replaced) == len(made[0])


def test_one_structured_log_line_per_request(tiny_client: TestClient,
                                             photo: Callable[[str], bytes],
                                             caplog: pytest.LogCaptureFixture) -> None:
    data = photo("rocket")
    with caplog.at_level(logging.INFO, logger="convserve.access"):
        response = tiny_client.post("/v1/models/tiny-rgb/classify", content=data,
                                    headers={"Content-Type": "image/jpeg", "X-Request-ID": "r-1"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "convserve.access"]
    mine = [line for line in lines if line["request_id"] == "r-1"]
    assert len(mine) == 1 and response.status_code == 200
    assert mine[0] | {"duration_ms": 0} == {
        "event": "request", "request_id": "r-1", "method": "POST",
        "path": "/v1/models/tiny-rgb/classify", "route": "/v1/models/{name}/classify",
        "status": 200, "duration_ms": 0, "client": "testclient", "model": "tiny-rgb",
        "version": 2, "images": 1}
    assert all(len(r.getMessage()) < 1000 for r in caplog.records)  # never the image bytes


def test_gpu_provider_fallback_is_reported(make_client: Callable[..., Any], tiny_models: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="convserve.runtime"), \
            make_client(tiny_models, providers="CUDA,CPU") as client:
        provider = client.get("/v1/models/tiny-rgb").json()["versions"][0]["provider"]
    cuda_runs = provider == "CUDAExecutionProvider"
    warned = [r.getMessage() for r in caplog.records
              if "CUDAExecutionProvider was requested but did not load" in r.getMessage()]
    if cuda_runs:  # a machine with a working GPU: nothing to warn about
        assert not warned
    else:
        assert provider == "CPUExecutionProvider" and len(warned) == 1, caplog.text


def test_an_empty_repository_is_ready_but_warned_about(make_client: Callable[..., Any],
                                                       tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="convserve.engine"), make_client(tmp_path) as client:
        assert client.get("/readyz").json() == {"status": "ready", "models": []}
    assert f"ready with NO models: {tmp_path.resolve()} holds no" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="convserve.engine"), \
            make_client(tmp_path, allow_empty=True):
        pass
    assert "NO models" not in caplog.text and "ready: 0 model version(s) loaded" in caplog.text
