"""``convserve serve --workers 2``: a real supervisor and two worker processes on one port.

Which worker served what is read from prometheus-client's per-process files in the run
directory (one file per PID), so the tests see real PIDs, not a guess from timing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import (
    metric_by_worker,
    serve_models,
    wait_workers_ready,
    worker_pids,
    worker_run_dir,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow
CLASSIFY = "/v1/models/tiny-rgb/classify"
ROUTE = "/v1/models/{name}/classify"  # the route label: the path's template


def _matches(name: str, labels: dict[str, str], sample_name: str,
             sample_labels: dict[str, str]) -> bool:
    return sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())


def _scraped(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text  # a new connection: any worker may answer
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if _matches(name, labels, sample.name, sample.labels))


def _classify(url: str, image: bytes) -> httpx.Response:
    return httpx.post(f"{url}{CLASSIFY}", files={"file": ("x.png", image)}, timeout=30)


@pytest.fixture()
def models(tiny_models: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny_models / "tiny-rgb" / "1", tmp_path / "models" / "tiny-rgb" / "1")
    return tmp_path / "models"


@pytest.fixture()
def server(models: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    # warning: no access lines, which would fill the unread output pipe and block the
    # supervisor's next log line (the replacement of a dead worker)
    with serve_models(models, CONVSERVE_WORKERS="2", CONVSERVE_LOG_LEVEL="warning",
                      ) as (process, url):
        yield process, url


def test_two_workers_serve_sum_their_metrics_and_reload_together(
        server: tuple[subprocess.Popen[str], str], models: Path, tiny_models: Path,
        photo: Callable[[str], bytes]) -> None:
    process, url = server
    workers = wait_workers_ready(process.pid, 2)
    metrics_dir = worker_run_dir(workers[0]) / "metrics"
    image = photo("chelsea")
    sent = 0
    with ThreadPoolExecutor(4) as pool:
        while sent < 400:  # each on a new connection, which the kernel hands to a worker
            statuses = [r.status_code for r in pool.map(lambda _: _classify(url, image),
                                                         range(8))]
            assert statuses == [200] * 8
            sent += 8
            served = metric_by_worker(metrics_dir, "convserve_requests_total", route=ROUTE)
            if all(served.get(pid, 0) > 0 for pid in workers):
                break
    assert {pid for pid, count in served.items() if count} == set(workers), served
    assert sum(served.values()) == sent
    for _ in range(6):  # whichever worker answers the scrape, it counts every worker's requests
        assert _scraped(url, "convserve_requests_total", route=ROUTE, status="200") == sent

    shutil.copytree(tiny_models / "tiny-rgb" / "2", models / "tiny-rgb" / "2")
    reload = httpx.post(f"{url}/v1/repository/reload", timeout=60)
    assert reload.status_code == 200 and reload.json()["added"] == ["tiny-rgb/2"]
    # read as the answer came: each worker had swapped v2 in
    ready = metric_by_worker(metrics_dir, "convserve_model_ready", "gauge_livemin",
                             model="tiny-rgb", version="2")
    assert ready == dict.fromkeys(workers, 1.0), ready
    with ThreadPoolExecutor(4) as pool:  # at once, on new connections: every worker has v2
        answers = list(pool.map(lambda _: _classify(url, image), range(60)))
    assert {(r.status_code, r.json()["version"]) for r in answers} == {(200, 2)}
    on_v2 = metric_by_worker(metrics_dir, "convserve_inference_count_total", model="tiny-rgb",
                       version="2")
    assert {pid for pid, count in on_v2.items() if count} == set(workers), on_v2
    assert _scraped(url, "convserve_model_ready", model="tiny-rgb", version="2") == 1


def test_a_killed_worker_is_replaced_and_the_other_keeps_serving(
        server: tuple[subprocess.Popen[str], str], photo: Callable[[str], bytes]) -> None:
    process, url = server
    victim, survivor = wait_workers_ready(process.pid, 2)
    metrics_dir = worker_run_dir(survivor) / "metrics"
    image = photo("chelsea")
    os.kill(victim, signal.SIGKILL)
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + 60
    replacement = None
    with ThreadPoolExecutor(2) as pool:
        while time.monotonic() < deadline:
            answers += pool.map(lambda _: _classify(url, image), range(4))
            replacement = next((pid for pid in worker_pids(process.pid)
                                if pid not in (victim, survivor)), None)
            served = metric_by_worker(metrics_dir, "convserve_requests_total", route=ROUTE,
                                status="200")
            if replacement and served.get(replacement, 0) > 0:
                break
    assert replacement is not None and served.get(replacement, 0) > 0, "never replaced"
    for response in answers:  # the survivor, or the replacement: ready, or 503 while it loads
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "not_ready"
            assert response.headers["Retry-After"] == "1"
    assert sum(r.status_code == 200 for r in answers) >= len(answers) // 2
    process.terminate()
    output = process.communicate(timeout=60)[0]
    assert f"worker {victim} died" in output and f"worker {replacement} replaces it" in output


def test_sigterm_drains_every_worker(models: Path, photo: Callable[[str], bytes]) -> None:
    with serve_models(models, CONVSERVE_WORKERS="2", CONVSERVE_MAX_QUEUE_DELAY_MS="1500",
                      CONVSERVE_MAX_BATCH_SIZE="8", CONVSERVE_GRACEFUL_SHUTDOWN_S="20",
                      ) as (process, url):
        wait_workers_ready(process.pid, 2)
        images = [photo(name) for name in ("chelsea", "rocket", "coffee", "astronaut")]
        with ThreadPoolExecutor(len(images)) as pool:
            futures = [pool.submit(_classify, url, data) for data in images]
            deadline = time.monotonic() + 20
            while _scraped(url, "convserve_queue_depth") < len(images):  # summed over workers
                assert time.monotonic() < deadline, "the requests never reached the queues"
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            responses = [future.result() for future in futures]
        output = process.communicate(timeout=60)[0]
    assert [r.status_code for r in responses] == [200] * len(images)
    assert process.returncode == 0, output
    assert output.count("queues drained") == 2, output
