"""The one place an exception becomes an HTTP answer, and the handlers that call it.

Every ``/v1`` error answer has the shape ``{"error": {"code": "...", "message": "..."}}``; the
Open Inference Protocol's paths (``/v2``) answer ``{"error": "message"}``. Routes and middleware
raise :class:`service.errors.ServiceError` subclasses (or let FastAPI's validation and HTTP errors
through); :func:`to_response` turns any of them, a client that went away, or a bug into its
answer. Anything unexpected is answered with a generic 500 that reveals nothing (and logged with
its traceback by ``RequestLog``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.errors import ServiceError
from service.http.methods import allowed_methods

PROTOCOL_PREFIX = "/v2"  # the Open Inference Protocol's paths answer {"error": "message"}
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every ``/v1`` error answer."""
    return {"error": {"code": code, "message": message}}


def _protocol(path: str) -> bool:
    return path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/")


def _describe_validation(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "path"))
    return f"{where}: {error.get('msg', 'invalid value')}" if where else str(error.get("msg"))


def _describe(exc: BaseException, protocol: bool, request_id: str,
              ) -> tuple[int, str, str, dict[str, str]]:
    """Status, code, message and headers of the answer to ``exc``."""
    if isinstance(exc, ServiceError):
        return exc.status_code, exc.code, exc.message, exc.headers
    if isinstance(exc, RequestValidationError):
        message = "; ".join(_describe_validation(dict(e)) for e in exc.errors())
        return 400 if protocol else 422, "invalid_parameter", message or "invalid request", {}
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the API"
        elif exc.status_code == 405 and message == "Method Not Allowed":
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"method not allowed here; use {allowed}" if allowed else message
        return exc.status_code, code, message, dict(exc.headers or {})
    if isinstance(exc, ClientDisconnect):
        return CLIENT_CLOSED, "client_closed", "the client closed the connection", {}
    return 500, "internal_error", (f"internal server error; quote request id {request_id} "
                                   "when reporting"), {}


def is_unexpected(exc: BaseException) -> bool:
    """Whether ``exc`` is a bug (answered with a generic 500, logged with its traceback)."""
    return not isinstance(exc, ServiceError | RequestValidationError | StarletteHTTPException
                          | ClientDisconnect)


def to_response(exc: BaseException, path: str, request_id: str = "-") -> Response:
    """The one place an exception becomes an answer: ``/v1``'s shape
    ``{"error": {"code", "message"}}``, or on ``/v2`` the protocol's ``{"error": "message"}``.

    Everything that answers an error calls it: the app's exception handlers, the middleware
    (API key, body limit, timeouts, the last-resort 500) and ``ClassifyShortcut``.
    """
    protocol = _protocol(path)
    status, code, message, headers = _describe(exc, protocol, request_id)
    body: dict[str, Any] = {"error": message} if protocol else error_body(code, message)
    return JSONResponse(body, status_code=status, headers=headers)


async def _handle(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StarletteHTTPException) and exc.status_code == 405:
        allowed = ", ".join(allowed_methods(request.app.routes, request.scope))
        exc = StarletteHTTPException(405, exc.detail, headers={**(exc.headers or {}),
                                                               "Allow": allowed})
    return to_response(exc, request.url.path, str(getattr(request.state, "request_id", "-")))


def register_error_handlers(app: FastAPI) -> None:
    """Map every exception to its answer through :func:`to_response`. Called by ``create_app``.

    An unexpected exception is answered here and re-raised by Starlette; ``RequestLog`` logs
    its traceback once.
    """
    for kind in (ServiceError, RequestValidationError, StarletteHTTPException, ClientDisconnect,
                 Exception):
        app.add_exception_handler(kind, _handle)
