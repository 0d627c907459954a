"""Domain exceptions: what the engine and the core refuse, with the status and code that say so.

Each class carries its HTTP status and a stable ``code`` as data; no web framework is imported
here, so training and the engine raise them without FastAPI installed. Each protocol adapter maps
them to its own answers in one place: HTTP in :mod:`service.http.errors`, gRPC in
:mod:`service.grpc.errors`. Messages say how to fix the problem.
"""

from __future__ import annotations


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
    """The model cannot do what the endpoint asks (classify on a face detector, expressions with
    a digit classifier, explain on a model whose card says none...): the one answer for all of
    them, everywhere. HTTP 422."""

    status_code = 422
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


class RequestTimeout(ServiceError):
    """The client sent the request body too slowly (``body_read_timeout_s``). HTTP 408."""

    status_code = 408
    code = "request_timeout"
