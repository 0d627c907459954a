"""``POST /v1/models/{name}/classify``: images in, top-k classes out, in the order sent.

The two routes are declared to FastAPI (OpenAPI docs, ``/docs``), and :class:`ClassifyShortcut`
answers them before FastAPI's routing: a pure-ASGI step, derived from the declared routes, that
skips routing, dependency injection and the exception middleware (CPU saved on every request:
docs/hardening.md has the figures and the command, scripts/bench_request_overhead.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.advice import classify_notes
from service.errors import ServiceError
from service.http.deps import Serving, ServingDep, get_serving
from service.http.errors import to_response
from service.http.uploads import read_uploads
from service.pipeline import classify, prepare_uploads
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
    """Classify the request's images with ``name`` (its default version, or ``version``)."""
    chosen = serving.repository.get(name, version)  # held for the whole request (reloads)
    chosen.require_classifier()
    assert chosen.input is not None
    request.state.model, request.state.version = chosen.name, chosen.version
    uploads = await read_uploads(request, serving.settings.max_images_per_request)
    request.state.images = len(uploads)
    arrays = await prepare_uploads(uploads, chosen.input, serving.pool,
                                   serving.settings.max_image_pixels, serving.metrics,
                                   (chosen.name, str(chosen.version)),
                                   serving.settings.max_request_pixels)
    results = await classify(chosen, arrays, uploads, serving.batcher, top_k)
    body = ClassifyResponse.model_construct(model=chosen.name, version=chosen.version,
                                            results=results, notes=classify_notes(chosen))
    # Serialised once here: FastAPI would validate the finished model again. Notes only when
    # there are some (the one field with a default).
    return Response(body.model_dump_json(exclude_defaults=True), media_type="application/json")


@router.post("/{name}/classify", response_model=ClassifyResponse, openapi_extra=_BODY,
             summary="Classify images with the default version")
async def classify_latest(name: str, request: Request, serving: ServingDep,
                          top_k: TopK = 5) -> Response:
    return await answer(request, serving, name, None, top_k)


@router.post("/{name}/versions/{version}/classify", response_model=ClassifyResponse,
             openapi_extra=_BODY, summary="Classify images with one version")
async def classify_version(name: str, version: str, request: Request, serving: ServingDep,
                           top_k: TopK = 5) -> Response:
    return await answer(request, serving, name, version, top_k)


_TOP_K = TypeAdapter(TopK)  # the declared query parameter's own type and bounds


def _top_k(raw: str | None) -> int:
    """``top_k`` from the query string, validated by :data:`TopK` itself (as FastAPI would)."""
    if raw is None:
        return 5
    try:
        return int(_TOP_K.validate_strings(raw))
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", "top_k")} for e in exc.errors()],
                                     ) from None


def _check_declared(route: APIRoute) -> None:
    """Refuse to shortcut ``route`` when it declares anything the shortcut would not honour.

    The shortcut calls the route's own endpoint with its path parameters, ``request``,
    ``serving`` (:func:`get_serving`) and ``top_k`` (:data:`TopK`): a dependency, header, body
    or query parameter added to the route (or its router) must be added here too, or start-up
    fails with this message, instead of being silently skipped.
    """
    dependant = route.dependant
    declared = {
        "path": sorted(p.name for p in dependant.path_params),
        "query": sorted(p.name for p in dependant.query_params),
        "dependencies": [d.call for d in dependant.dependencies],
        "other": [p.name for p in (*dependant.header_params, *dependant.cookie_params,
                                   *dependant.body_params)],
        "request": dependant.request_param_name,
    }
    expected = {
        "path": sorted(route.param_convertors),
        "query": ["top_k"],
        "dependencies": [get_serving],
        "other": [],
        "request": "request",
    }
    if declared != expected or route.dependencies or route.methods != {"POST"}:
        raise RuntimeError(f"ClassifyShortcut cannot answer {route.path} as declared "
                           f"({declared}); teach it the change or drop the shortcut")


class ClassifyShortcut:
    """Answers ``POST`` on the two classify routes without FastAPI's routing (pure ASGI).

    Measured worth: ``scripts/bench_request_overhead.py`` (docs/hardening.md). It is derived
    from the declared routes, so the two cannot drift: it matches their own path regexes, calls
    their own endpoints, validates ``top_k`` with the declared :data:`TopK`, gets ``serving``
    from the declared dependency, and :func:`_check_declared` fails start-up if a route gains
    anything else. It sits innermost among the middleware, so the request id, access log, API
    key and body limits apply as everywhere; it sets ``scope["route"]`` to the declared route
    (metric labels and logs name its template) and maps errors with
    :func:`service.http.errors.to_response`, as the exception handlers do.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute] = router.routes) -> None:
        """``routes``: this module's (``create_app`` includes its router as it is, adding no
        dependencies; the check sees dependencies declared on a route or on ``router``)."""
        self.app = app
        self.routes = [route for route in routes if isinstance(route, APIRoute)
                       and route.endpoint in (classify_latest, classify_version)]
        for route in self.routes:
            _check_declared(route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        for route in self.routes:
            match = route.path_regex.match(scope["path"])
            if match is not None:
                break
        else:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        request = Request(scope, receive, send)
        response: Response
        try:
            top_k = _top_k(request.query_params.get("top_k"))
            response = await route.endpoint(request=request, serving=await get_serving(request),
                                            top_k=top_k, **match.groupdict())
        except (ServiceError, RequestValidationError) as exc:
            response = to_response(exc, scope["path"])
        await response(scope, receive, send)
