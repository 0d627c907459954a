"""Dynamic batching through HTTP: concurrent requests share ONNX Runtime runs; overload -> 503."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

PHOTOS = ("chelsea", "rocket", "coffee", "astronaut", "china", "flower", "messi", "squirrel")
MODEL = {"model": "tiny-rgb", "version": "2"}


def _classify(client: TestClient, data: bytes) -> httpx.Response:
    return client.post("/v1/models/tiny-rgb/classify", files={"file": ("x", data)},
                       params={"top_k": 10})


@pytest.mark.slow
def test_concurrent_requests_share_batches(make_client: Callable[..., Any], tiny_models: Path,
                                           photo: Callable[[str], bytes],
                                           metric: Callable[..., float]) -> None:
    images = [photo(name) for name in PHOTOS]
    with make_client(tiny_models, max_queue_delay_ms=300, max_batch_size=8) as client:
        alone = [_classify(client, data).json()["results"] for data in images]
        runs = metric(client, "convserve_batch_size_count", **MODEL)
        inferred = metric(client, "convserve_batch_size_sum", **MODEL)
        assert (runs, inferred) == (len(images), len(images))  # one run per request so far
        start = threading.Barrier(len(images))

        def send(data: bytes) -> httpx.Response:
            start.wait()
            return _classify(client, data)

        with ThreadPoolExecutor(len(images)) as pool:
            together = list(pool.map(send, images))
        assert [r.json()["results"] for r in together] == alone  # each gets its own answer
        merged_runs = metric(client, "convserve_batch_size_count", **MODEL) - runs
        assert metric(client, "convserve_batch_size_sum", **MODEL) - inferred == len(images)
        assert merged_runs < len(images) / 2, f"{merged_runs} runs for {len(images)} requests"
        assert metric(client, "convserve_inference_exec_count_total", **MODEL) == runs + \
            merged_runs


def test_more_images_than_the_queue_holds_are_answered_in_runs(
        make_client: Callable[..., Any], tiny_models: Path, photo: Callable[[str], bytes],
        metric: Callable[..., float]) -> None:
    """Six images, a queue of three: an idle server answers them all (in runs of at most three)
    instead of a 503 that no retry could cure; a full queue's 503 is tested in
    tests/unit/test_batching.py."""
    with make_client(tiny_models, max_queue_size=3, max_batch_size=1, retry_after_s=2) as client:
        files = [("file", (f"{i}.jpg", photo("rocket"))) for i in range(6)]
        response = client.post("/v1/models/tiny-rgb/classify", files=files)
        assert response.status_code == 200, response.text
        assert [r["filename"] for r in response.json()["results"]] == [
            f"{i}.jpg" for i in range(6)]
        assert metric(client, "convserve_queue_rejected_total", **MODEL) == 0
        assert metric(client, "convserve_queue_depth", **MODEL) == 0


@pytest.mark.slow
def test_off_the_cpu_inference_threads_warm_up_before_ready(
        make_client: Callable[..., Any], tiny_models: Path, photo: Callable[[str], bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where batches are padded (a GPU, here forced on the CPU), each classifier's inference
    threads run every padded size before /readyz says ready, and answers are unchanged."""
    from service import model_version

    files = [("file", (f"{name}.jpg", photo(name))) for name in PHOTOS[:3]]
    with make_client(tiny_models, max_batch_size=4) as client:
        plain = client.post("/v1/models/tiny-rgb/classify", files=files).json()
    warmed: list[tuple[str, str]] = []
    warm_up_thread = model_version.ModelVersion.warm_up_thread

    def recorded(self: model_version.ModelVersion) -> None:
        time.sleep(0.2)
        warm_up_thread(self)
        warmed.append((self.key, threading.current_thread().name))

    monkeypatch.setattr(model_version, "gpu_batch_sizes", lambda sessions, settings: (1, 2, 4))
    monkeypatch.setattr(model_version.ModelVersion, "warm_up_thread", recorded)
    with make_client(tiny_models, max_batch_size=4, instances=2) as client:
        keys = [f"{v['name']}/{v['version']}" for m in client.get("/v1/models").json()["models"]
                for v in m["versions"] if v["task"] in ("classification", "expression")]
        threads = {(key, f"infer-{key}-{i}") for key in keys for i in range(2)}
        assert set(warmed) == threads and len(warmed) == len(threads)
        padded = client.post("/v1/models/tiny-rgb/classify", files=files).json()
    assert padded == plain
