"""``POST /v1/models/{name}/classify``: images in, top-k classes out, in the order sent.

The two routes are declared to FastAPI (OpenAPI docs, ``/docs``), and :class:`ClassifyShortcut`
answers them before FastAPI's routing: a pure-ASGI step that skips routing, dependency injection
and the exception middleware, ~60 us of CPU per request (scripts/bench_request_overhead.py).
Both call :func:`answer`, so they answer alike.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.deps import Serving, ServingDep, get_serving
from service.errors import InvalidParameter, ServiceError, to_response
from service.pipeline import classify, prepare_uploads, read_uploads
from service.schemas import ClassifyResponse, ErrorResponse

PREFIX = "/v1/models"
MAX_TOP_K = 1000
router = APIRouter(prefix=PREFIX, tags=["classify"], responses={
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503)})

TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K,
                            description="how many classes to return per image")]

_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}


async def answer(request: Request, serving: Serving, name: str, version: str | None,
                 top_k: int) -> Response:
    """Classify the request's images with ``name`` (its newest version, or ``version``)."""
    chosen = serving.repository.get(name, version)  # held for the whole request (reloads)
    chosen.require_classifier()
    assert chosen.input is not None
    request.state.model, request.state.version = chosen.name, chosen.version
    uploads = await read_uploads(request, serving.settings.max_images_per_request)
    request.state.images = len(uploads)
    arrays = await prepare_uploads(uploads, chosen.input, serving.pool,
                                   serving.settings.max_image_pixels, serving.metrics,
                                   (chosen.name, str(chosen.version)))
    results = await classify(chosen, arrays, uploads, serving.batcher, top_k)
    body = ClassifyResponse.model_construct(model=chosen.name, version=chosen.version,
                                            results=results)
    # Serialised once here: FastAPI would validate the finished model again.
    return Response(body.model_dump_json(), media_type="application/json")


@router.post("/{name}/classify", response_model=ClassifyResponse, openapi_extra=_BODY,
             summary="Classify images with the newest version")
async def classify_latest(name: str, request: Request, serving: ServingDep,
                          top_k: TopK = 5) -> Response:
    return await answer(request, serving, name, None, top_k)


@router.post("/{name}/versions/{version}/classify", response_model=ClassifyResponse,
             openapi_extra=_BODY, summary="Classify images with one version")
async def classify_version(name: str, version: str, request: Request, serving: ServingDep,
                           top_k: TopK = 5) -> Response:
    return await answer(request, serving, name, version, top_k)


def parse_top_k(raw: str | None) -> int:
    """``top_k`` from the query string, checked as :data:`TopK` declares it.

    Raises:
        InvalidParameter: not a whole number from 1 to ``MAX_TOP_K`` (HTTP 422).
    """
    if raw is None:
        return 5
    try:
        k = int(raw)
    except ValueError:
        k = 0
    if 1 <= k <= MAX_TOP_K:
        return k
    raise InvalidParameter(f"top_k: must be a whole number from 1 to {MAX_TOP_K}, not {raw!r}")


class ClassifyShortcut:
    """Answers ``POST`` on the two classify routes without FastAPI's routing (pure ASGI).

    It sits innermost among the middleware, so the request id, access log, API key and body
    limit apply as everywhere; it sets ``scope["route"]`` to the declared route (metric labels
    and logs name its template) and maps :class:`ServiceError` as the exception handlers do.
    """

    _PATH = re.compile(rf"^{PREFIX}/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/classify$")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        templates = {getattr(route, "path", None): route for route in router.routes}
        self.latest = templates[f"{PREFIX}/{{name}}/classify"]
        self.versioned = templates[f"{PREFIX}/{{name}}/versions/{{version}}/classify"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (self._PATH.match(scope["path"])
                 if scope["type"] == "http" and scope["method"] == "POST" else None)
        if match is None:
            await self.app(scope, receive, send)
            return
        name, version = match["name"], match["version"]
        scope["route"] = self.latest if version is None else self.versioned
        request = Request(scope, receive, send)
        response: Response
        try:
            top_k = parse_top_k(request.query_params.get("top_k"))
            response = await answer(request, await get_serving(request), name, version, top_k)
        except ServiceError as exc:
            response = to_response(exc, scope["path"])
        await response(scope, receive, send)
