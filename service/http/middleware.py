"""Pure ASGI middleware: request id, one structured log line, metrics, API key, body limits.

Order, outermost first: :class:`RequestLog` (so even a 401 or 413 is logged, counted and carries
its ``X-Request-ID``; it is also the last line of defence that turns an unexpected exception into
the generic 500), :class:`ApiKeyAuth`, :class:`BodyLimit` (size, read timeout, and the bytes all
unfinished uploads may hold together). Every error answer comes from
:func:`service.http.errors.to_response`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.auth import check_api_key
from service.errors import Overloaded, PayloadTooLarge, RequestTimeout, Unauthorized
from service.http.errors import CLIENT_CLOSED, is_unexpected, to_response
from service.metrics import Metrics

access_log = logging.getLogger("convserve.access")
logger = logging.getLogger("convserve.errors")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Request ids: a random per-process prefix and a counter (uuid4 per request costs a syscall).
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)
# Paths any caller may reach without the API key: probes and scrapers.
# The page, its static files and the API's documentation carry no data: the page asks for the
# key and sends it itself, and Swagger UI sends it after its Authorize button (service.http.
# openapi_auth puts the Bearer scheme into /openapi.json).
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect",
                          "/redoc", "/openapi.json"})
PUBLIC_PREFIXES = ("/v2/health/", "/static/", "/docs-assets/")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestLog:
    """Gives each request an id (``X-Request-ID``), logs one JSON line and counts it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        if incoming and _REQUEST_ID.match(incoming):
            request_id = incoming
        else:
            request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if is_unexpected(exc):
                logger.error("unhandled error on %s %s (request %s)", scope.get("method"),
                             scope.get("path"), request_id, exc_info=exc)
            if not started:  # a 499 reaches nobody, but its status is counted and logged
                await to_response(exc, scope["path"], request_id)(scope, receive, send_with_id)
        finally:
            self._record(scope, request_id, status, time.perf_counter() - start)

    def _record(self, scope: Scope, request_id: str, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "")
        labels = (template, method, status)
        children = self._children.get(labels)
        if children is None:  # labels() takes a lock and builds a key: once per combination
            children = self._children[labels] = (
                self.metrics.requests.labels(template, method, str(status)),
                self.metrics.request_duration.labels(template))
        children[0].inc()
        children[1].observe(seconds)
        if not access_log.isEnabledFor(logging.INFO):
            return
        state: dict[str, Any] = scope.get("state", {})
        line: dict[str, Any] = {
            "event": "request", "request_id": request_id, "method": method,
            "path": scope.get("path"), "route": template, "status": status,
            "duration_ms": round(seconds * 1000, 2), "client": (scope.get("client") or ("-",))[0]}
        for key in ("model", "version", "images"):
            if key in state:
                line[key] = state[key]
        if status == CLIENT_CLOSED:  # not a server error: one INFO line, no traceback
            line["note"] = "the client closed the connection before the answer"
        access_log.info(json.dumps(line))


class ApiKeyAuth:
    """Requires ``Authorization: Bearer <key>`` on every path but the public ones (the scheme
    in any case, as RFC 9110 says; the key compared in constant time): the check gRPC makes
    too, :func:`service.auth.check_api_key`."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (self.api_key is None or scope["type"] != "http" or path in PUBLIC_PATHS
                or path.startswith(PUBLIC_PREFIXES)):
            await self.app(scope, receive, send)
            return
        try:
            check_api_key(_header(scope, b"authorization"), self.api_key)
        except Unauthorized as exc:
            await to_response(exc, path)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Bounds what request bodies cost: size, read time, and memory held by unfinished uploads.

    - A body over ``max_bytes`` is refused: by Content-Length up front, else while streaming
      (413).
    - A client that sends nothing for ``read_timeout_s`` while its body is unfinished gets 408
      and the connection is closed (a stalled upload no longer holds its bytes); so does one
      whose body, after ``read_timeout_s``, averages less than ``min_rate`` bytes/s (one byte
      every 20 s would otherwise keep an upload open for ever).
    - The bytes of all unfinished bodies together stay under ``max_pending_bytes``: a body that
      would pass it is refused with 503 and ``Retry-After`` (checked by Content-Length up front,
      then as it streams), so stalled clients cannot pin the server's memory.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float,
                 max_pending_bytes: int, retry_after_s: int, min_rate: float = 0.0) -> None:
        self.app = app
        self.min_rate = min_rate
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.max_pending_bytes = max_pending_bytes
        self.retry_after_s = retry_after_s
        self.pending = 0  # bytes received of bodies not yet complete, over all requests

    def _too_large(self, size: str) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is {size} bytes, more than the limit of "
                               f"{self.max_bytes} (CONVSERVE_MAX_BODY_BYTES); send smaller or "
                               "fewer images", headers={"Connection": "close"})

    def _busy(self) -> Overloaded:
        return Overloaded(f"uploads in progress already hold {self.pending} bytes, the most the "
                          f"server buffers (CONVSERVE_MAX_PENDING_UPLOAD_BYTES); retry after "
                          f"{self.retry_after_s} s",
                          headers={"Retry-After": str(self.retry_after_s),
                                   "Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit():
            refusal = (self._too_large(declared) if int(declared) > self.max_bytes
                       else self._busy() if self.pending + int(declared) > self.max_pending_bytes
                       else None)
            if refusal is not None:
                await to_response(refusal, scope["path"])(scope, receive, send)
                return
        received = 0
        complete = False
        started = time.monotonic()

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            wait, slow = self.read_timeout_s, False
            if self.min_rate > 0:  # the body's deadline moves on with each byte received
                left = started + self.read_timeout_s + received / self.min_rate - time.monotonic()
                wait, slow = min(wait, max(left, 0.0)), left < wait
            try:
                async with asyncio.timeout(wait):
                    message = await receive()
            except TimeoutError:
                if slow:
                    raise RequestTimeout(
                        f"the body arrives too slowly: {received} bytes in "
                        f"{time.monotonic() - started:.0f} s, less than {self.min_rate:g} bytes/s "
                        "(CONVSERVE_BODY_MIN_RATE); send the body at once",
                        headers={"Connection": "close"}) from None
                raise RequestTimeout(
                    f"no request data for {self.read_timeout_s:g} s after {received} bytes of the "
                    "body (CONVSERVE_BODY_READ_TIMEOUT_S); send the body at once",
                    headers={"Connection": "close"}) from None
            if message["type"] != "http.request":
                return message  # http.disconnect
            chunk = len(message.get("body", b""))
            received += chunk
            self.pending += chunk
            if not message.get("more_body", False):
                complete = True
                self.pending -= received
            if received > self.max_bytes:
                raise self._too_large(f"over {received}")
            if not complete and self.pending > self.max_pending_bytes:
                raise self._busy()
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            if not complete:
                self.pending -= received


class Tracing:
    """One OpenTelemetry span per request, a child of the caller's ``traceparent``; added by
    ``create_app`` only when :mod:`service.tracing` is on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        method = scope.get("method", "")
        attributes = {"http.request.method": method, "url.path": scope.get("path", "")}
        with tracing.request_span(method, carrier, attributes) as span:

            async def send_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)


def request_id(request: Request) -> str:
    """The id :class:`RequestLog` gave this request."""
    return str(getattr(request.state, "request_id", "-"))
