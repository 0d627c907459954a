"""New version directories are picked up without a restart; requests in flight keep theirs."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

CLASSIFY = "/v1/models/tiny-rgb/classify"


@pytest.fixture()
def models(tmp_path: Path, tiny_models: Path) -> Path:
    shutil.copytree(tiny_models, tmp_path / "models")
    return tmp_path / "models"


@pytest.fixture(scope="session")
def exporter(export_classifier: Callable[..., Path]) -> Callable[..., Path]:
    return export_classifier


def _versions(client: TestClient) -> list[int]:
    return [v["version"] for v in client.get("/v1/models/tiny-rgb").json()["versions"]]


def test_reload_adds_and_removes_versions(make_client: Callable[..., Any], models: Path,
                                          exporter: Callable[..., Path],
                                          photo: Callable[[str], bytes]) -> None:
    data = photo("chelsea")
    with make_client(models) as client:
        assert client.post(CLASSIFY, files={"file": ("c", data)}).json()["version"] == 2
        exporter(models, "tiny-rgb", 3, seed=7, resize={
            "method": "shorter-side-center-crop", "shorter_side": 36})
        assert _versions(client) == [2, 1]  # nothing changes by itself (no polling)
        reloaded = client.post("/v1/repository/reload").json()
        assert reloaded["added"] == ["tiny-rgb/3"] and reloaded["removed"] == []
        assert "tiny-rgb/3" in reloaded["models"]
        answer = client.post(CLASSIFY, files={"file": ("c", data)}).json()
        assert answer["version"] == 3
        shutil.rmtree(models / "tiny-rgb" / "1")
        assert client.post("/v1/repository/reload").json()["removed"] == ["tiny-rgb/1"]
        assert _versions(client) == [3, 2]
        gone = client.post("/v1/models/tiny-rgb/versions/1/classify", files={"file": ("c", data)})
        assert gone.status_code == 404


def test_half_written_version_is_ignored_then_loaded(make_client: Callable[..., Any],
                                                     models: Path,
                                                     exporter: Callable[..., Path]) -> None:
    with make_client(models) as client:
        written = exporter(models, "tiny-rgb", 4, seed=4)
        meta = (written / "model.json").read_bytes()
        (written / "model.json").unlink()  # model.onnx written, model.json not yet
        assert client.post("/v1/repository/reload").json()["added"] == []
        (written / "model.json").write_bytes(meta)
        assert client.post("/v1/repository/reload").json()["added"] == ["tiny-rgb/4"]


def test_broken_version_keeps_readiness_503_until_fixed(make_client: Callable[..., Any],
                                                       models: Path,
                                                       exporter: Callable[..., Path]) -> None:
    with make_client(models) as client:
        broken = exporter(models, "tiny-grey", 2, channels=1, size=28)
        (broken / "model.onnx").write_bytes(b"not an onnx graph")
        result = client.post("/v1/repository/reload").json()
        assert list(result["failed"]) == ["tiny-grey/2"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "tiny-grey/2" in ready.json()["error"]["message"]
        assert client.get("/v1/models/tiny-grey").json()["default_version"] == 1  # still serves
        shutil.rmtree(broken)
        assert client.post("/v1/repository/reload").json()["failed"] == {}
        assert client.get("/readyz").status_code == 200


def test_polling_picks_up_a_new_version(make_client: Callable[..., Any], models: Path,
                                        exporter: Callable[..., Path]) -> None:
    with make_client(models, reload_interval_s=0.1) as client:
        exporter(models, "tiny-rgb", 5, seed=5)
        deadline = time.monotonic() + 20
        while 5 not in _versions(client) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _versions(client) == [5, 2, 1]


@pytest.mark.slow
def test_request_in_flight_finishes_on_its_version(make_client: Callable[..., Any],
                                                   models: Path, exporter: Callable[..., Path],
                                                   photo: Callable[[str], bytes],
                                                   metric: Callable[..., float]) -> None:
    data = photo("coffee")
    with make_client(models, max_queue_delay_ms=1500) as client:
        before = client.post(CLASSIFY, files={"file": ("c", data)}).json()
        answers: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: answers.append(client.post(CLASSIFY, files={"file": ("c", data)})))
        worker.start()
        deadline = time.monotonic() + 10
        while metric(client, "convserve_queue_depth", model="tiny-rgb", version="2") < 1:
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.01)
        exporter(models, "tiny-rgb", 6, seed=6)
        shutil.rmtree(models / "tiny-rgb" / "2")  # its version vanishes while it waits
        reloaded = client.post("/v1/repository/reload").json()
        assert reloaded["added"] == ["tiny-rgb/6"] and reloaded["removed"] == ["tiny-rgb/2"]
        worker.join(10)
        (answer,) = answers
        assert answer.status_code == 200
        assert answer.json() == before  # version 2 answered, with version 2's weights
        assert client.post(CLASSIFY, files={"file": ("c", data)}).json()["version"] == 6
