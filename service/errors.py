"""Domain exceptions, each with its HTTP status, and the handlers that turn them into JSON.

Every error answer has the shape ``{"error": {"code": "...", "message": "..."}}``. Routes raise
the exceptions below; :func:`register_error_handlers` maps them (and FastAPI's own validation and
HTTP errors) in one place. Anything else is logged with its traceback and answered with a generic
500 that reveals nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("convserve.errors")


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


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"error": {"code": code, "message": message}}


def error_response(code: str, message: str, status: int,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.code, exc.message, exc.status_code, exc.headers)


def _describe_validation(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "path"))
    return f"{where}: {error.get('msg', 'invalid value')}" if where else str(error.get("msg"))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = "; ".join(_describe_validation(dict(e)) for e in exc.errors())
    return error_response("invalid_parameter", message or "invalid request", 422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = "no such endpoint; see /docs for the API"
    return error_response(code, message, exc.status_code, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "-")
    logger.error("unhandled error on %s %s (request %s)", request.method, request.url.path,
                 request_id, exc_info=exc)
    return error_response("internal_error",
                          f"internal server error; quote request id {request_id} when reporting",
                          500)


def register_error_handlers(app: FastAPI) -> None:
    """Map every exception to its JSON answer. Called once by ``create_app``."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
