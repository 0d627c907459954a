"""uvicorn's HTTP protocol with a header read timeout: slow or silent clients (slowloris) closed.

uvicorn bounds the idle time *between* requests (``timeout_keep_alive``) but not the time a client
takes to send a request's line and headers: a connection that opens and sends nothing, or sends
one header byte now and then, stays open for ever, and the application never sees it (so no ASGI
middleware can time it out). :func:`with_header_timeout` adds that one timer to uvicorn's own
protocol class: armed when a connection opens and when the first byte of a further request
arrives, disarmed by uvicorn starting the request (a new ``cycle``); when it fires first, the
client gets ``408 Request Timeout`` and the connection is closed. The body's read timeout is an
ASGI concern (``service.http.middleware.BodyLimit``).
"""

from __future__ import annotations

import asyncio
import json
import logging
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


def with_header_timeout(base: type[asyncio.Protocol], seconds: float) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's ``H11Protocol`` or ``HttpToolsProtocol``) with a header timeout."""

    class HeaderTimeout(base):  # type: ignore[valid-type,misc]
        _header_timer: asyncio.TimerHandle | None = None
        _waiting_cycle: Any = None  # the cycle current when the timer was armed

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and (self._header_timer is None or self._waiting_cycle is not self.cycle):
                self._disarm()
                self._arm()  # the first bytes of a further request on a kept-alive connection
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
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


def http_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's preferred HTTP protocol (httptools, else h11) with the header timeout."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # uvicorn without its [standard] extra
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]
    return with_header_timeout(base, seconds)


# ``--workers N``: uvicorn pickles its config into each spawned worker, and a class made at run
# time cannot be pickled, so workers name the protocol by import path; it is built in the worker
# from that process's settings (module ``__getattr__`` below).
WORKER_PROTOCOL = f"{__name__}:SettingsHttpProtocol"


def __getattr__(name: str) -> Any:
    if name == "SettingsHttpProtocol":
        from service.settings import load_settings

        return http_protocol(load_settings().header_read_timeout_s)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def uvicorn_options(settings: Settings, http: type[asyncio.Protocol] | str) -> dict[str, Any]:
    """The ``uvicorn.Config`` options one process and ``--workers N`` share (``http``: the
    protocol class with the header timeout, or :data:`WORKER_PROTOCOL`)."""
    return {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
            "access_log": False, "loop": "auto", "http": http,
            "timeout_graceful_shutdown": int(settings.graceful_shutdown_s),
            # JSON lines: uvicorn's loggers keep no handlers of their own and reach ours
            **({"log_config": None} if settings.log_format == "json" else {})}
