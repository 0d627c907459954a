"""A real uvicorn process: ``python -m service serve``, graceful SIGTERM, start-up errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import free_port, serve_command, serve_models

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def server(tiny_models: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with serve_models(tiny_models, CONVSERVE_MAX_QUEUE_DELAY_MS="1500",
                      CONVSERVE_MAX_BATCH_SIZE="8", CONVSERVE_GRACEFUL_SHUTDOWN_S="20",
                      ) as (process, url):
        yield process, url


def _queued(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('convserve_queue_depth{model="tiny-rgb",version="2"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
def test_sigterm_finishes_accepted_requests(server: tuple[subprocess.Popen[str], str],
                                            photo: Callable[[str], bytes]) -> None:
    process, url = server
    images = [photo(name) for name in ("chelsea", "rocket", "coffee", "astronaut")]

    def classify(data: bytes) -> httpx.Response:
        return httpx.post(f"{url}/v1/models/tiny-rgb/classify", files={"file": ("x", data)},
                          timeout=30)

    with ThreadPoolExecutor(len(images)) as pool:
        futures = [pool.submit(classify, data) for data in images]
        deadline = time.monotonic() + 20
        while _queued(url) < len(images):  # all accepted, waiting in the batcher's queue
            assert time.monotonic() < deadline, "the requests never reached the queue"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        responses = [future.result() for future in futures]
    assert [r.status_code for r in responses] == [200] * len(images)
    assert all(len(r.json()["results"][0]["predictions"]) == 5 for r in responses)
    output = process.communicate(timeout=30)[0]
    # uvicorn re-raises the signal once shut down cleanly: exit status -SIGTERM (or 0).
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "queues drained" in output and "Application shutdown complete" in output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz")


@pytest.mark.slow
def test_bad_settings_stop_the_start_with_a_clear_message(tmp_path: Path) -> None:
    env = {**os.environ, "CONVSERVE_MAX_BATCH_SIZE": "0", "CONVSERVE_PROVIDERS": "CUDA,GPU"}
    process = subprocess.Popen(serve_command(tmp_path / "missing", free_port()), cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 2
    assert "CONVSERVE_MODELS_DIR" in output and "is not a directory" in output
    assert "CONVSERVE_MAX_BATCH_SIZE" in output
    assert "unknown execution provider 'GPU'" in output


@pytest.mark.slow
def test_cli_help_lists_serve_and_its_options() -> None:
    top = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "serve" in top.stdout
    serve = subprocess.run([sys.executable, "-m", "service", "serve", "--help"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert all(option in serve.stdout for option in ("--host", "--port", "--models", "--workers"))


def _start(models: Path, port: int, *extra: str) -> tuple[int, str, float]:
    start = time.monotonic()
    env = {**os.environ, "CONVSERVE_PROVIDERS": "CPU"}
    done = subprocess.run([*serve_command(models, port), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def test_port_in_use_fails_at_once_in_one_line(tiny_models: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, output, seconds = _start(tiny_models, port)
    assert code == 2
    assert output.strip() == (f"convserve: cannot listen on 127.0.0.1:{port}: Address already "
                              "in use (another process is listening there, perhaps another "
                              "convserve); choose another port with --port (or CONVSERVE_PORT), "
                              "or --host")
    assert "loaded model" not in output  # nothing loaded before the check
    print(f"port in use: exit {code} after {seconds:.2f} s")  # noqa: T201


def test_empty_models_dir_refused_unless_allowed(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    (empty / "Not_A_Model").mkdir(parents=True)  # a wrong path holds other things
    code, output, _ = _start(empty, free_port())
    assert code == 2
    assert f"no models in {empty}" in output and "--allow-empty" in output
    assert output.strip().count("\n") == 0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CONVSERVE_PROVIDERS": "CPU"}
    from conftest import run_service

    with run_service([*serve_command(empty, port), "--allow-empty"], url, env):
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "models": []}
    with run_service(serve_command(empty, port), url, {**env, "CONVSERVE_ALLOW_EMPTY": "true"}):
        assert httpx.get(f"{url}/v1/models").json() == {"models": []}
