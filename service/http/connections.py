"""uvicorn's HTTP protocol with a header read timeout, a connection cap and a send timeout.

uvicorn bounds the idle time *between* requests (``timeout_keep_alive``) but not the time a client
takes to send a request's line and headers: a connection that opens and sends nothing, or sends
one header byte now and then, stays open for ever, and the application never sees it (so no ASGI
middleware can time it out). :func:`with_header_timeout` adds that one timer to uvicorn's own
protocol class: armed when a connection opens and when the first byte of a further request
arrives, disarmed by uvicorn starting the request (a new ``cycle``); when it fires first, the
client gets ``408 Request Timeout`` and the connection is closed. The body's read timeout is an
ASGI concern (``service.http.middleware.BodyLimit``).

Two more bounds live here, where connections are made and written:

- **A cap on open connections** (``max_connections``): past it, a new connection is answered
  ``503`` with ``Retry-After`` and closed at once. Without it, a thousand idle or dripping
  clients filled the file table (``ulimit -n``) and every new client, probes included, got a
  connection reset for as long as they stayed. The cap stays under that limit, so there is
  always a descriptor to answer with.
- **A send timeout** (``send_timeout_s``): a client that reads nothing of its answer keeps the
  server's send buffer full, and the answer in memory, for as long as it stays connected
  (20 such clients held +230 MB of ``/v2`` answers). When writing stays paused that long, the
  connection is aborted and the answer freed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger("convserve.connections")

_BODY = json.dumps({"error": {"code": "request_timeout", "message": (
    "the request line and headers did not arrive in time (CONVSERVE_HEADER_READ_TIMEOUT_S)")}}
                   ).encode()
RESPONSE_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n"
                + _BODY)


_BUSY = json.dumps({"error": {"code": "overloaded", "message": (
    "the server has as many connections open as it takes (CONVSERVE_MAX_CONNECTIONS); retry "
    "in a moment")}}).encode()
RESPONSE_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
                + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY)


def connection_cap(configured: int = 0) -> int:
    """``configured``, or (0) the open files limit less 10% and 64 (models, logs, threads)."""
    if configured:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65_536
    return max(16, int(soft * 0.9) - 64)


def with_header_timeout(base: type[asyncio.Protocol], seconds: float, max_connections: int = 0,
                        send_timeout_s: float | None = None) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's ``H11Protocol`` or ``HttpToolsProtocol``) with a header timeout, a
    cap on open connections (:func:`connection_cap` of ``max_connections``) and, when
    ``send_timeout_s`` is given, a send timeout."""
    cap = connection_cap(max_connections)
    refused = [0, float("-inf")]  # connections refused since the last log line, and its time

    class HeaderTimeout(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None
        _waiting_cycle: Any = None  # the cycle current when the timer was armed
        _send_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > cap:  # uvicorn's own set of this server's connections
                now = self.loop.time()
                if now - refused[1] >= 10:  # one line per 10 s, with a count, not one each
                    logger.warning("refused %d connections: %d open, the most allowed "
                                   "(CONVSERVE_MAX_CONNECTIONS)", refused[0] + 1, cap)
                    refused[:] = [0, now]
                else:
                    refused[0] += 1
                transport.write(RESPONSE_503)
                transport.close()
                return
            self._arm()

        def pause_writing(self) -> None:
            super().pause_writing()
            if send_timeout_s is not None and self._send_timer is None:
                self._send_timer = self.loop.call_later(send_timeout_s, self._send_expired)

        def resume_writing(self) -> None:
            self._cancel_send_timer()
            super().resume_writing()

        def _cancel_send_timer(self) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        def _send_expired(self) -> None:
            self._send_timer = None
            logger.info("closed a connection from %s: it read nothing of its answer for %g s "
                        "(CONVSERVE_SEND_TIMEOUT_S)", (self.client or ("-",))[0], send_timeout_s)
            self.transport.abort()  # connection_lost follows: the answer is dropped

        def data_received(self, data: bytes) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and (self._header_timer is None or self._waiting_cycle is not self.cycle):
                self._disarm()
                self._arm()  # the first bytes of a further request on a kept-alive connection
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._cancel_send_timer()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._waiting_cycle = self.cycle
            self._header_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self.cycle is not self._waiting_cycle or self.transport.is_closing():
                return  # the request's headers arrived in time
            logger.info("closed a connection from %s: no complete request headers in %g s",
                        (self.client or ("-",))[0], seconds)
            self.transport.write(RESPONSE_408)
            self.transport.close()

    HeaderTimeout.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeout


def http_protocol(seconds: float, max_connections: int = 0,
                  send_timeout_s: float | None = None) -> type[asyncio.Protocol]:
    """uvicorn's preferred HTTP protocol (httptools, else h11) with the header timeout, the
    connection cap and the send timeout (:func:`with_header_timeout`)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # uvicorn without its [standard] extra
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]
    return with_header_timeout(base, seconds, max_connections, send_timeout_s)


def settings_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """:func:`http_protocol` with the bounds ``settings`` gives."""
    return http_protocol(settings.header_read_timeout_s, settings.max_connections,
                         settings.send_timeout_s)


# ``--workers N``: uvicorn pickles its config into each spawned worker, and a class made at run
# time cannot be pickled, so workers name the protocol by import path; it is built in the worker
# from that process's settings (module ``__getattr__`` below).
WORKER_PROTOCOL = f"{__name__}:SettingsHttpProtocol"


def __getattr__(name: str) -> Any:
    if name == "SettingsHttpProtocol":
        from service.settings import load_settings

        return settings_protocol(load_settings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def uvicorn_options(settings: Settings, http: type[asyncio.Protocol] | str) -> dict[str, Any]:
    """The ``uvicorn.Config`` options one process and ``--workers N`` share (``http``: the
    protocol class with the header timeout, or :data:`WORKER_PROTOCOL`)."""
    return {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
            "access_log": False, "loop": "auto", "http": http,
            "timeout_graceful_shutdown": int(settings.graceful_shutdown_s),
            # JSON lines: uvicorn's loggers keep no handlers of their own and reach ours
            **({"log_config": None} if settings.log_format == "json" else {})}
