"""Issue 13's holes, each closed and held closed by the same bytes an attacker sent.

A real uvicorn process (``python -m service serve``) for what only a socket shows: slow or
stalled clients, clients that go away, memory held by unfinished uploads. In-process clients for
the rest: the bad-input corpus of ``/v2``, the 7000x7000 GIF, more faces than the queue holds,
405 and HEAD.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import copy_models, serve_models
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from measure_expressions_memory import big_gif  # noqa: E402

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


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _upload_head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a"],
                         ids=["silent", "slowloris"])
def test_slow_headers_get_408_and_the_connection_closes(server: str, sent: bytes) -> None:
    with _connect(server) as sock:
        start = time.monotonic()
        sock.sendall(sent)
        answer = _read_all(sock)  # the server closes it
        waited = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert b"CONVSERVE_HEADER_READ_TIMEOUT_S" in answer
    assert 0.9 < waited < 5


def test_headers_are_timed_again_after_a_kept_alive_request(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"alive"' not in first:  # the whole answer, headers and body
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(1.2)  # longer than the header timeout, shorter than the keep-alive one
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a second request that stalls
        assert _read_all(sock).startswith(b"HTTP/1.1 408")


def test_stalled_body_gets_408(server: str) -> None:
    with _connect(server) as sock:
        sock.sendall(_upload_head("/v1/models/tiny-rgb/classify", 100_000) + b"\xff\xd8\xff")
        answer = _read_all(sock)
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
        assert _read_all(stalled).startswith(b"HTTP/1.1 408")  # then its bytes are let go
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


# ----------------------------------------------------------------------------------------------
# /v2: issue 13's bad-input corpus, byte for byte, then more of the kind: 400 in the protocol's
# shape, never a 500.

def _infer(**changes: Any) -> bytes:
    entry: dict[str, Any] = {"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                             "data": [0] * 784}
    body: dict[str, Any] = {"inputs": [entry]}
    for key, value in changes.items():
        target = entry if key in entry or key == "parameters_input" else body
        target[key.removesuffix("_input")] = value
    return json.dumps(body).encode()


BAD_V2 = [
    (_infer(parameters_input=5), "inputs.0.parameters: Input should be an object"),
    (_infer(parameters_input="binary_data_size"),
     "inputs.0.parameters: Input should be an object"),
    (b"[" * 100_000, "recursion limit exceeded"),
    (b'{"a":' * 100_000, "recursion limit exceeded"),
    (_infer(outputs=[{"name": "probabilities", "parameters": 7}]),
     "outputs.0.parameters: Input should be an object"),
    (_infer(outputs=[1]), "outputs.0: Input should be an object"),
    (_infer(shape=[True, 28, 28, 1]), "inputs.0.shape.0: Input should be a valid integer"),
    (b"null", "Input should be an object"),
    (b'{"inputs": {}}', "inputs: Input should be a valid array"),
    (_infer(data=[[0] * 28] * 27 + [[0] * 27]), "'data' is not a regular array"),
]


@pytest.mark.parametrize(("body", "message"), BAD_V2)
def test_v2_bad_input_is_400_in_the_protocol_shape(tiny_client: TestClient, body: bytes,
                                                   message: str) -> None:
    response = tiny_client.post("/v2/models/tiny-grey/infer", content=body,
                                headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and message in error, error


def test_big_json_infer_body_is_parsed_and_answered(tiny_client: TestClient) -> None:
    """A 2 MB JSON body (parsed in the decode pool, off the event loop) is answered."""
    pixels = np.arange(64 * 784, dtype=np.int64) % 256
    body = {"inputs": [{"name": "image", "shape": [64, 28, 28, 1], "datatype": "UINT8",
                        "data": pixels.tolist()}]}
    response = tiny_client.post("/v2/models/tiny-grey/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [64, 10]


@pytest.mark.parametrize(("method", "path", "status", "allow"), [
    ("PUT", "/v2/health/live", 405, "GET"),
    ("DELETE", "/v2/models/tiny-rgb/infer", 405, "POST"),
    ("GET", "/v2/models/tiny-rgb/infer", 405, "POST"),
    ("POST", "/v2/health/nothing", 404, None),
])
def test_v2_wrong_method_is_405_and_unknown_path_404(tiny_client: TestClient, method: str,
                                                     path: str, status: int,
                                                     allow: str | None) -> None:
    response = tiny_client.request(method, path)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str)
    if allow is None:
        assert error == "no such endpoint; see /docs for the API"
    else:
        assert response.headers["allow"] == allow
        assert error == f"method not allowed here; use {allow}"


def test_v1_wrong_method_is_405_in_the_v1_shape(tiny_client: TestClient) -> None:
    response = tiny_client.put("/v1/models")
    assert response.status_code == 405
    assert response.json()["error"] == {"code": "method_not_allowed",
                                        "message": "method not allowed here; use GET"}


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_answer_head(tiny_client: TestClient, path: str) -> None:
    head, get = tiny_client.head(path), tiny_client.get(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""


def test_openapi_declares_what_v2_answers(tiny_client: TestClient) -> None:
    paths = tiny_client.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert {"200", "400", "404", "503"} <= set(infer["responses"])
    assert infer["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProtocolErrorResponse"}
    schema = infer["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["inputs"] and "$ref" not in json.dumps(schema)
    for operation in ("/healthz", "/readyz", "/metrics"):
        assert set(paths[operation]) == {"get"}  # HEAD answered, not listed twice


# ----------------------------------------------------------------------------------------------
# Bounded cost: the 35-byte 7000x7000 GIF, many images, many faces.

@pytest.fixture(scope="module")
def faces_client(make_client: Callable, shipped_model: Callable[[str], Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("faces")
    for name in ("fer-minixception", "face-mtcnn", "mnist-lenet5"):
        shutil.copytree(shipped_model(name), root / name)
    with make_client(root, max_queue_size=2, detection_max_side=1000) as client:
        yield client


def test_gif_bomb_is_detected_on_a_bounded_copy(faces_client: TestClient,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from service.faces import MTCNN

    seen: list[tuple[int, ...]] = []
    detect = MTCNN.detect

    def spy(self: MTCNN, image: np.ndarray, config: Any = None) -> Any:
        seen.append(image.shape)
        return detect(self, image, config)

    monkeypatch.setattr(MTCNN, "detect", spy)
    response = faces_client.post("/v1/expressions", files={"file": ("g.gif", big_gif())})
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 7000, "height": 7000}
    assert response.json()["faces"] == []
    assert seen == [(1000, 1000, 3)]  # detection_max_side, not 7000x7000


def test_many_big_images_are_refused_before_decoding(faces_client: TestClient) -> None:
    files = [("file", (f"{i}.gif", big_gif())) for i in range(64)]
    response = faces_client.post("/v1/models/mnist-lenet5/classify", files=files)
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "image_too_large",
        "message": "the 64 images have 3136000000 pixels together, more than the limit of "
                   "200000000 per request (CONVSERVE_MAX_REQUEST_PIXELS); send fewer or "
                   "smaller images"}


def test_more_faces_than_the_queue_holds_are_answered(faces_client: TestClient,
                                                      photo: Callable[[str], bytes]) -> None:
    """5 faces, a queue of 2: classified in runs of 2, 2 and 1 instead of an endless 503."""
    response = faces_client.post("/v1/expressions", files={"file": ("m.jpg", photo("multi-face"))})
    assert response.status_code == 200, response.text
    assert len(response.json()["faces"]) == 5


def test_big_group_photo_boxes_are_in_its_own_pixels(faces_client: TestClient,
                                                     photo: Callable[[str], bytes]) -> None:
    """The real 5-face photo at 2x (2000x1334), detected on a 1000-px copy: the boxes are the
    1x photo's boxes, doubled."""
    import io

    from PIL import Image

    small = faces_client.post("/v1/expressions", files={"file": ("m.jpg", photo("multi-face"))})
    image = Image.open(io.BytesIO(photo("multi-face"))).convert("RGB")
    out = io.BytesIO()
    image.resize((2000, 1334), Image.Resampling.LANCZOS).save(out, "JPEG", quality=95)
    big = faces_client.post("/v1/expressions", files={"file": ("big.jpg", out.getvalue())},
                            params={"min_face_size": 40})
    assert big.status_code == 200, big.text
    assert len(big.json()["faces"]) == len(small.json()["faces"]) == 5
    for large, reference in zip(big.json()["faces"], small.json()["faces"], strict=True):
        side = reference["box"]["width"]
        for key in ("x", "y", "width", "height"):
            assert abs(large["box"][key] / 2 - reference["box"][key]) < 0.15 * side


def test_detection_neither_starves_classify_nor_queues_without_bound(
        make_client: Callable, shipped_model: Callable[[str], Path], photo: Callable[[str], bytes],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One decode thread, one detection slot: while a detection runs, classify still decodes
    and answers, and a second detection is refused at once with 503 + Retry-After."""
    import threading

    from service.routes import expressions

    for name in ("fer-minixception", "face-mtcnn", "mnist-lenet5"):
        (tmp_path / name).symlink_to(shipped_model(name), target_is_directory=True)
    started, release = threading.Event(), threading.Event()
    analyse = expressions.analyse

    def held(*args: Any) -> Any:
        started.set()
        release.wait(60)
        return analyse(*args)

    monkeypatch.setattr(expressions, "analyse", held)
    with make_client(tmp_path, decode_workers=1, detect_workers=1, max_pending_detections=1,
                     retry_after_s=3) as client, ThreadPoolExecutor(1) as background:
        first = background.submit(client.post, "/v1/expressions",
                                  files={"file": ("m.jpg", photo("multi-face"))})
        assert started.wait(30)
        png = photo("astronaut")  # a PNG: decoded in the decode pool, never inline
        digit = client.post("/v1/models/mnist-lenet5/classify", files={"file": ("a.png", png)})
        assert digit.status_code == 200, digit.text
        assert not first.done()  # answered while the detection still held its thread
        second = client.post("/v1/expressions", files={"file": ("m.jpg", photo("multi-face"))})
        assert second.status_code == 503 and second.headers["retry-after"] == "3"
        assert second.json()["error"]["message"].startswith(
            "1 face detections are running or waiting, the most allowed "
            "(CONVSERVE_MAX_PENDING_DETECTIONS)")
        release.set()
        assert first.result(60).status_code == 200
        assert len(first.result().json()["faces"]) == 5
