"""Domain exceptions, each with its HTTP status, and the handlers that turn them into JSON.

Every ``/v1`` error answer has the shape ``{"error": {"code": "...", "message": "..."}}``; the
Open Inference Protocol's paths (``/v2``) answer ``{"error": "message"}``. Routes and middleware
raise the exceptions below; :func:`to_response` is the one function that turns any exception
(these, FastAPI's validation and HTTP errors, a client that went away, a bug) into its answer.
Anything unexpected is answered with a generic 500 that reveals nothing (and logged with its
traceback by ``RequestLog``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect


class SettingsError(ValueError):
    """The settings are invalid; the message lists what to fix. Raised at start-up, not served."""


class ServiceError(Exception):
    """Base of every error the service answers on purpose. HTTP status 500."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    """A malformed request body (e.g. broken multipart framing). HTTP 400."""

    status_code = 400
    code = "bad_request"


class InvalidImage(ServiceError):
    """The bytes are not a decodable image (corrupt or truncated). HTTP 400."""

    status_code = 400
    code = "invalid_image"


class UnsupportedTask(ServiceError):
    """The model cannot answer this endpoint (e.g. classify on a face detector). HTTP 400."""

    status_code = 400
    code = "unsupported_task"


class Unauthorized(ServiceError):
    """Missing or wrong API key. HTTP 401."""

    status_code = 401
    code = "unauthorized"


class ModelNotFound(ServiceError):
    """No model with that name. HTTP 404."""

    status_code = 404
    code = "model_not_found"


class VersionNotFound(ServiceError):
    """The model exists but not that version. HTTP 404."""

    status_code = 404
    code = "version_not_found"


class PayloadTooLarge(ServiceError):
    """The request body is larger than ``max_body_bytes``. HTTP 413."""

    status_code = 413
    code = "payload_too_large"


class ImageTooLarge(ServiceError):
    """The image has more pixels than ``max_image_pixels``; it was not decoded. HTTP 413."""

    status_code = 413
    code = "image_too_large"


class UnsupportedMediaType(ServiceError):
    """An image format (or request content type) the service does not read. HTTP 415."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidParameter(ServiceError):
    """A bad parameter: top_k < 1, no file, too many files... HTTP 422."""

    status_code = 422
    code = "invalid_parameter"


class CannotExplain(ServiceError):
    """The model can neither show class activation maps nor be occluded (a face detector, or
    ``explain.method`` none in its model.json). HTTP 422."""

    status_code = 422
    code = "cannot_explain"


class NotReady(ServiceError):
    """The models have not finished loading (or one failed to load). HTTP 503 with
    ``Retry-After``: a balancer or client tries again (another worker or replica may be ready)."""

    status_code = 503
    code = "not_ready"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "1", **(headers or {})})


class ReloadIncomplete(ServiceError):
    """A reload reached this worker but not yet every other one (``--workers N``). HTTP 503."""

    status_code = 503
    code = "reload_incomplete"


class Overloaded(ServiceError):
    """The batching queue is full; retry after ``Retry-After`` seconds. HTTP 503."""

    status_code = 503
    code = "overloaded"


class RequestTimeout(ServiceError):
    """The client sent the request body too slowly (``body_read_timeout_s``). HTTP 408."""

    status_code = 408
    code = "request_timeout"


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
    return to_response(exc, request.url.path, str(getattr(request.state, "request_id", "-")))


def register_error_handlers(app: FastAPI) -> None:
    """Map every exception to its answer through :func:`to_response`. Called by ``create_app``.

    An unexpected exception is answered here and re-raised by Starlette; ``RequestLog`` logs
    its traceback once.
    """
    for kind in (ServiceError, RequestValidationError, StarletteHTTPException, ClientDisconnect,
                 Exception):
        app.add_exception_handler(kind, _handle)
