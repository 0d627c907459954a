"""What the routes declare to OpenAPI in common: image request bodies, error answers, and one
endpoint registered for a model's default version and for a named one.

The service reads request bodies itself (one pass, limits first), so FastAPI cannot infer them:
they are declared here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter

from service.schemas import ErrorResponse, ProtocolErrorResponse

F = TypeVar("F", bound=Callable[..., Any])
V1_ERRORS = (400, 401, 404, 413, 415, 422, 503)
V2_ERRORS = (400, 401, 404, 405, 408, 413, 422, 503)


def _upload(many: bool) -> dict[str, Any]:
    file: dict[str, Any] = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "array", "items": file} if many else file}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }}}


def image_body(many: bool = False, answers: tuple[str, ...] = ()) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads uploads: ``many`` images or one, answering the
    media types in ``answers`` besides JSON."""
    extra = _upload(many)
    if answers:
        extra["responses"] = {"200": {"content": {media: {} for media in answers}}}
    return extra


def errors(*statuses: int, protocol: bool = False) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a router: each status answered with the error body (``/v1``'s, or
    the Open Inference Protocol's with ``protocol``)."""
    model = ProtocolErrorResponse if protocol else ErrorResponse
    return {status: {"model": model} for status in statuses}


def versioned(router: APIRouter, method: str, action: str, summary: str, base: str = "",
              **kwargs: Any) -> Callable[[F], F]:
    """Register the decorated endpoint at ``{base}/{name}{action}`` (the model's default
    version) and ``{base}/{name}/versions/{version}{action}``: one handler for both.

    The endpoint declares ``name: str`` and ``version: str | None = None``: a path parameter on
    the second path; on the first, FastAPI takes it from the query string (``?version=2`` works
    there too), absent meaning the default version.
    """
    def register(endpoint: F) -> F:
        router.add_api_route(f"{base}/{{name}}{action}", endpoint, methods=[method],
                             summary=f"{summary} (default version)", **kwargs)
        router.add_api_route(f"{base}/{{name}}/versions/{{version}}{action}", endpoint,
                             methods=[method], summary=f"{summary} (one version)", **kwargs)
        return endpoint
    return register
