"""Issue 13's slow and stalled clients, and clients that go away, on a real uvicorn process
(``python -m service serve``): only a socket shows them. Each test sends the same kind of bytes
the attacker sent: no headers, headers one byte at a time, a body that stops, a client that
hangs up mid-upload.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import copy_models, read_until_closed, serve_models

SLOW = {"CONVSERVE_HEADER_READ_TIMEOUT_S": "1", "CONVSERVE_BODY_READ_TIMEOUT_S": "1",
        "CONVSERVE_MAX_BODY_BYTES": str(1_000_000),
        "CONVSERVE_MAX_PENDING_UPLOAD_BYTES": str(1_500_000)}


@pytest.fixture(scope="module")
def server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = copy_models(tiny_models, tmp_path_factory.mktemp("hardening"))
    with serve_models(models, **SLOW) as (_, url):
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _upload_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a"],
                         ids=["silent", "slowloris"])
def test_slow_headers_get_408_and_the_connection_closes(server: str, sent: bytes) -> None:
    with _connect(server) as sock:
        start = time.monotonic()
        sock.sendall(sent)
        answer = read_until_closed(sock)  # the server closes it
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert b"CONVSERVE_HEADER_READ_TIMEOUT_S" in answer
    assert 0.9 < waited < 5


def test_every_worker_times_out_slow_headers(tiny_models: Path,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    """``--workers N`` builds uvicorn's config apart from one process: its workers must close
    silent connections too (each connection goes to whichever worker accepts it)."""
    models = copy_models(tiny_models, tmp_path_factory.mktemp("workers"))
    with serve_models(models, CONVSERVE_WORKERS="2", CONVSERVE_LOG_LEVEL="warning",
                      **SLOW) as (_, url):
        for _ in range(4):
            with _connect(url) as sock:
                assert read_until_closed(sock).startswith(b"HTTP/1.1 408 Request Timeout")


def test_headers_are_timed_again_after_a_kept_alive_request(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"alive"' not in first:  # the whole answer, headers and body
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(1.2)  # longer than the header timeout, shorter than the keep-alive one
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a second request that stalls
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_stalled_body_gets_408(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(_upload_head("/v1/models/tiny-rgb/classify", 100_000) + b"\xff\xd8\xff")
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["error"] == {
        "code": "request_timeout",
        "message": "no request data for 1 s after 3 bytes of the body "
                   "(CONVSERVE_BODY_READ_TIMEOUT_S); send the body at once"}


def test_unfinished_uploads_hold_a_bounded_total(server: str) -> None:
    """One stalled upload holds 900 kB of the 1.5 MB budget: a second is refused at once."""
    with _connect(server) as stalled:
        stalled.sendall(_upload_head("/v1/models/tiny-rgb/classify", 999_000) + bytes(900_000))
        time.sleep(0.5)
        refused = httpx.post(f"{server}/v1/models/tiny-rgb/classify", content=bytes(700_000),
                             headers={"Content-Type": "image/jpeg"})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["message"].startswith("uploads in progress already hold")
        assert read_until_closed(stalled).startswith(b"HTTP/1.1 408")  # then its bytes are let go
    small = httpx.post(f"{server}/v1/models/tiny-rgb/classify", content=bytes(700_000),
                       headers={"Content-Type": "image/jpeg"})
    assert small.status_code == 400  # back within the budget: read, and not an image


def test_client_abort_is_499_not_a_server_error(tiny_models: Path, tmp_path: Path) -> None:
    models = copy_models(tiny_models, tmp_path / "models")
    with serve_models(models, **SLOW) as (process, url):
        with _connect(url) as sock:
            sock.sendall(_upload_head("/v1/models/tiny-rgb/classify", 100_000) + bytes(1000))
        time.sleep(0.5)
        metrics = httpx.get(f"{url}/metrics").text
    output = process.communicate()[0]
    assert ('convserve_requests_total{method="POST",route="/v1/models/{name}/classify",'
            'status="499"} 1.0') in metrics
    assert 'status="500"' not in metrics
    assert "Traceback" not in output and " ERROR " not in output, output
    lines = [json.loads(line[line.index("{"):]) for line in output.splitlines()
             if '"status": 499' in line]
    assert len(lines) == 1 and lines[0]["note"] == (
        "the client closed the connection before the answer")
