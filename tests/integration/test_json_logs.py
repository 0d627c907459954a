"""``CONVSERVE_LOG_FORMAT=json``: every line the service writes is one JSON object, uvicorn's own
lines and the access lines included (a real ``convserve serve`` process)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import free_port, run_service, serve_command

from service.logs import JsonLines


def test_every_line_of_a_real_server_is_json(shipped_repository: Callable[..., Path]) -> None:
    models = shipped_repository("mnist-lenet5")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CONVSERVE_PROVIDERS": "CPU", "CONVSERVE_LOG_FORMAT": "json"}
    digit = (Path(__file__).resolve().parents[2] / "samples" / "digit.png").read_bytes()
    with run_service(serve_command(models, port), url, env) as process:
        answer = httpx.post(f"{url}/v1/models/mnist-lenet5/classify",
                            files={"file": ("digit.png", digit)}, headers={"X-Request-ID": "r-7"})
        assert answer.status_code == 200
        assert httpx.get(f"{url}/v1/models/nope").status_code == 404
        process.terminate()
        output = process.communicate(timeout=60)[0]
    lines = [json.loads(line) for line in output.splitlines()]  # fails on any other line
    assert all({"time", "level", "logger"} <= line.keys() for line in lines)
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "convserve.access"} <= loggers, loggers
    assert any("Uvicorn running" in line.get("message", "") for line in lines)
    access = next(line for line in lines if line.get("request_id") == "r-7")
    assert access["logger"] == "convserve.access" and access["status"] == 200
    assert "message" not in access  # the request's fields, at the top level


def test_a_traceback_stays_inside_its_line() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.LogRecord("convserve.errors", logging.ERROR, __file__, 1, "failed %s",
                                   ("x",), exc_info=sys.exc_info())
    line = JsonLines(process=True).format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed x" and "ValueError: broken" in parsed["exception"]
    assert parsed["level"] == "ERROR" and isinstance(parsed["pid"], int)
