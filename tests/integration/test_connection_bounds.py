"""Issue 26's connection attacks on a real uvicorn process: a body dripped a byte at a time,
more idle connections than the server takes, and clients that never read their answers
(``service/http/middleware.py`` BodyLimit, ``service/http/connections.py``). Only sockets show
them; the figures before and after are in docs/hardening.md (``scripts/hardening_probe.py``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import copy_models, read_until_closed, serve_models

pytestmark = pytest.mark.slow  # a server process each


def _connect(url: str, receive_buffer: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(20)
    sock.connect((host, int(port)))
    return sock


@pytest.fixture(scope="module")
def server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = copy_models(tiny_models, tmp_path_factory.mktemp("connections"))
    with serve_models(models, CONVSERVE_BODY_READ_TIMEOUT_S="2", CONVSERVE_BODY_MIN_RATE="20",
                      CONVSERVE_MAX_CONNECTIONS="12", CONVSERVE_SEND_TIMEOUT_S="1",
                      CONVSERVE_LOG_LEVEL="warning") as (_, url):
        yield url


def test_a_dripped_body_gets_408(server: str) -> None:
    """One byte every 0.5 s never trips the 2 s silence timeout, but averages 2 bytes/s, under
    the 20 bytes/s minimum: the upload is ended instead of lasting for ever."""
    with _connect(server) as sock:
        sock.sendall(b"POST /v1/models/tiny-rgb/classify HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
        answer = b""
        for _ in range(60):  # at most 30 s; the server answers long before
            try:
                sock.sendall(b"\xff")
            except OSError:
                break
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                answer += sock.recv(65536)
            if b"\r\n\r\n" in answer:
                break
        sock.settimeout(5)
        answer += read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    message = json.loads(body)["error"]["message"]
    assert message.startswith("the body arrives too slowly:"), message
    assert "less than 20 bytes/s (CONVSERVE_BODY_MIN_RATE)" in message


def test_connections_past_the_cap_get_503_not_a_reset(server: str) -> None:
    idle = [_connect(server) for _ in range(12)]
    try:
        time.sleep(0.3)
        refused = httpx.get(f"{server}/healthz", timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "CONVSERVE_MAX_CONNECTIONS" in refused.json()["error"]["message"]
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"{server}/healthz", timeout=10).status_code == 200


def test_a_client_that_never_reads_is_disconnected(server: str) -> None:
    """300 pipelined requests for the OpenAPI document, never read: once the server's send
    buffer has been full for the send timeout, it aborts the connection and drops the
    answers, instead of holding them for as long as the client stays."""
    document = httpx.get(f"{server}/openapi.json").content
    request = b"GET /openapi.json HTTP/1.1\r\nHost: t\r\n\r\n"
    with _connect(server, receive_buffer=4096) as sock:
        sock.sendall(request * 300)
        time.sleep(4)  # the send timeout (1 s) passes with nothing read
        received = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received) < 300 * len(document) / 2, len(received)  # most were never sent
    assert httpx.get(f"{server}/healthz").status_code == 200
