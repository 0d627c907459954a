"""``WebSocket /v1/expressions/stream``: live expressions, one JSON answer per processed frame.

The adapter over :mod:`service.streams`: it checks the API key, takes a stream slot, reads
binary frames into the stream's :class:`~service.streams.LatestFrame` (a newer frame replaces a
waiting one, counted as dropped), sends each answer, and closes with a code that says why:

* 1001: no frame for ``CONVSERVE_STREAM_IDLE_TIMEOUT_S``;
* 1003: a text message (frames are binary JPEG or PNG bytes);
* 1007: a frame that is not a JPEG or PNG image;
* 1008: missing or wrong API key, an unknown model, or a client that does not read its answers
  within ``CONVSERVE_STREAM_SEND_TIMEOUT_S``;
* 1009: a frame over ``CONVSERVE_STREAM_MAX_FRAME_BYTES`` or ``..._MAX_FRAME_PIXELS``;
* 1013: all ``CONVSERVE_MAX_STREAMS`` streams are open (try again later, as a 503 would say).

Before closing on purpose it sends ``{"error": {"code", "message"}}`` with the full message (a
close reason holds 123 bytes at most). The API key travels in the ``Sec-WebSocket-Protocol``
header, which browsers can set and access logs do not record: offer the subprotocols
``convserve.v1`` and ``convserve.bearer.<key in base64url, no padding>``; the server accepts
``convserve.v1``. ``Authorization: Bearer <key>`` also works for clients that can set headers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket

from model_format import Capability
from service.engine import Engine
from service.errors import (
    ImageTooLarge,
    InvalidImage,
    InvalidParameter,
    ServiceError,
    UnsupportedMediaType,
)
from service.expressions import DEFAULT_DETECTOR, DEFAULT_MODEL, CropSpec, detector_of
from service.faces import DetectorConfig
from service.settings import Settings
from service.streams import Stream, StreamLimits

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["expressions"])
SUBPROTOCOL = "convserve.v1"
KEY_PROTOCOL = "convserve.bearer."


@dataclass(frozen=True)
class Close:
    """Why the stream ends: a WebSocket close code and the message."""

    code: int
    message: str
    error: str = "stream_closed"


def limits_from(settings: Settings) -> StreamLimits:
    return StreamLimits(
        max_frame_bytes=settings.stream_max_frame_bytes,
        max_frame_pixels=min(settings.stream_max_frame_pixels, settings.max_image_pixels),
        max_fps=settings.stream_max_fps, idle_timeout_s=settings.stream_idle_timeout_s,
        send_timeout_s=settings.stream_send_timeout_s, max_streams=settings.max_streams,
        detect_side=settings.stream_detect_side)


def _key_problem(websocket: WebSocket, settings: Settings) -> str | None:
    """Why the key is refused, or None when it is fine (or none is set)."""
    if settings.api_key is None:
        return None
    expected = settings.api_key.get_secret_value().encode()
    given: bytes | None = None
    for offered in websocket.scope.get("subprotocols", []):
        if offered.startswith(KEY_PROTOCOL):
            token = offered[len(KEY_PROTOCOL):]
            try:
                given = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            except (binascii.Error, ValueError):
                return ("the key subprotocol is not base64url: offer "
                        "'convserve.bearer.<base64url key>'")
    header = websocket.headers.get("authorization", "")
    if given is None and header.startswith("Bearer "):
        given = header[len("Bearer "):].encode()
    if given is None:
        return ("missing API key: offer the subprotocol 'convserve.bearer.<base64url key>' "
                "(or send 'Authorization: Bearer <key>')")
    return None if hmac.compare_digest(given, expected) else "wrong API key"


async def _read(websocket: WebSocket, stream: Stream) -> Close | None:
    """Frames into the stream until the client leaves (None) or must be closed."""
    limits = stream.limits
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), limits.idle_timeout_s)
        except TimeoutError:
            return Close(1001, f"no frame for {limits.idle_timeout_s:g} s "
                         "(CONVSERVE_STREAM_IDLE_TIMEOUT_S)", "idle")
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("bytes")
        if data is None:
            return Close(1003, "text messages are not frames: send each frame as a binary "
                         "message holding JPEG or PNG bytes", "text_message")
        if len(data) > limits.max_frame_bytes:
            return Close(1009, f"a frame of {len(data)} bytes is over the "
                         f"{limits.max_frame_bytes} allowed (CONVSERVE_STREAM_MAX_FRAME_BYTES): "
                         "send smaller JPEG frames", "frame_too_large")
        stream.frames.put(data)


def _close_for(error: Exception) -> Close:
    if isinstance(error, ImageTooLarge):
        return Close(1009, str(error), "frame_too_large")
    if isinstance(error, InvalidImage | UnsupportedMediaType):
        return Close(1007, f"a frame is not a JPEG or PNG image: {error}", "invalid_frame")
    if isinstance(error, ServiceError):
        return Close(1013 if error.status_code == 503 else 1008, str(error), error.code)
    logger.exception("expression stream failed", exc_info=error)
    return Close(1011, "internal error", "internal")


async def _close(websocket: WebSocket, close: Close) -> None:
    """Send the error message and close, giving up on a client that does not read."""
    try:
        await asyncio.wait_for(websocket.send_json(
            {"error": {"code": close.error, "message": close.message}}), 2.0)
        await asyncio.wait_for(websocket.close(close.code, close.message[:120]), 2.0)
    except Exception:  # noqa: BLE001 - the client is gone or stuck: nothing more to tell it
        pass


async def _serve(websocket: WebSocket, stream: Stream) -> Close | None:
    """Answer frames until the reader or the processing ends the stream."""
    reader = asyncio.create_task(_read(websocket, stream))
    try:
        while True:
            answer = asyncio.create_task(stream.next_answer())
            await asyncio.wait({reader, answer}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                answer.cancel()
                await asyncio.gather(answer, return_exceptions=True)
                return reader.result()
            try:
                message: dict[str, Any] | None = answer.result()
            except Exception as error:  # noqa: BLE001 - mapped to a close code
                return _close_for(error)
            if message is None:
                return None
            try:
                await asyncio.wait_for(websocket.send_json(message), stream.limits.send_timeout_s)
            except TimeoutError:
                return Close(1008, "the client did not read its answers for "
                             f"{stream.limits.send_timeout_s:g} s "
                             "(CONVSERVE_STREAM_SEND_TIMEOUT_S)", "not_reading")
    finally:
        stream.frames.close()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


@router.websocket("/expressions/stream")
async def expression_stream(websocket: WebSocket, model: str = DEFAULT_MODEL,
                            detector: str = DEFAULT_DETECTOR, min_face_size: int = 20) -> None:
    """Frames in (binary JPEG/PNG), one JSON answer per processed frame out."""
    engine: Engine = websocket.app.state.engine
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    problem = _key_problem(websocket, engine.settings)
    if problem is not None:
        await _close(websocket, Close(1008, problem, "unauthorized"))
        return
    slots = engine.streams
    if not slots.acquire():
        await _close(websocket, Close(1013, f"{slots.limit} streams are open, the most allowed "
                                      "(CONVSERVE_MAX_STREAMS): retry later", "too_many_streams"))
        return
    engine.metrics.streams_active.inc()
    try:
        stream = open_stream(engine, model, detector, min_face_size)
        close = await _serve(websocket, stream)
    except ServiceError as error:
        close = _close_for(error)
    finally:
        slots.release()
        engine.metrics.streams_active.dec()
    if close is not None:
        await _close(websocket, close)


def open_stream(engine: Engine, model: str, detector: str, min_face_size: int) -> Stream:
    """The stream's models and limits (raises ServiceError: an unknown model, one that cannot
    do this, the engine not serving)."""
    engine.check_serving()
    if not 10 <= min_face_size <= 10000:
        raise InvalidParameter(f"min_face_size={min_face_size} must be 10 to 10000 px")
    classifier = engine.get(model, None, Capability.EXPRESSIONS)
    finder = detector_of(engine.get(detector, None, Capability.DETECT_FACES))
    assert classifier.input is not None

    async def classify(crops: list[Any]) -> list[Any]:
        return await engine.infer(classifier, crops)

    return Stream(detector=finder, spec=classifier.input,
                  crop=CropSpec.from_card(classifier.card), labels=list(classifier.labels),
                  classify=classify, detection=engine.detection_slots(), metrics=engine.metrics,
                  limits=limits_from(engine.settings),
                  config=DetectorConfig(min_face_size=min_face_size))
