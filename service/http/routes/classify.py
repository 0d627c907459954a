"""``POST /v1/models/{name}/classify``: images in, top-k classes out, in the order sent.

The two routes are declared to FastAPI (OpenAPI docs, ``/docs``), and :class:`ClassifyShortcut`
answers them before FastAPI's routing: a pure-ASGI step, derived from the declared routes, that
skips routing, dependency injection and the exception middleware (CPU saved on every request:
docs/hardening.md has the figures and the command, scripts/bench_request_overhead.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, routing
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from model_format import Capability
from service.advice import classify_notes
from service.engine import Engine
from service.errors import ServiceError
from service.http.deps import EngineDep, get_serving_engine
from service.http.errors import to_response
from service.http.openapi import V1_ERRORS, errors, image_body, versioned
from service.http.uploads import read_uploads
from service.schemas import ClassifyResponse

PREFIX = "/v1/models"
MAX_TOP_K = 1000
router = APIRouter(prefix=PREFIX, tags=["classify"], responses=errors(*V1_ERRORS))

TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K,
                            description="how many classes to return per image")]


async def answer(request: Request, engine: Engine, name: str, version: str | None,
                 top_k: int) -> Response:
    """Classify the request's images with ``name`` (its default version, or ``version``)."""
    chosen = engine.get(name, version, Capability.CLASSIFY)  # held for the whole request
    request.state.model, request.state.version = chosen.name, chosen.version
    uploads = await read_uploads(request, engine.settings.max_images_per_request)
    request.state.images = len(uploads)
    results = await engine.classify(chosen, uploads, top_k)
    body = ClassifyResponse.model_construct(model=chosen.name, version=chosen.version,
                                            results=results, notes=classify_notes(chosen))
    # Serialised once here: FastAPI would validate the finished model again. Notes only when
    # there are some (the one field with a default).
    return Response(body.model_dump_json(exclude_defaults=True), media_type="application/json")


@versioned(router, "POST", "/classify", "Classify images", response_model=ClassifyResponse,
           openapi_extra=image_body(many=True))
async def classify_images(name: str, request: Request, engine: EngineDep, top_k: TopK = 5,
                          version: str | None = None) -> Response:
    return await answer(request, engine, name, version, top_k)


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


def _check_declared(route: Any) -> None:
    """Refuse to shortcut ``route`` when it declares anything the shortcut would not honour.

    ``route`` is one of the app's own routes, as FastAPI built it: its dependencies include
    those given to ``FastAPI(dependencies=...)``, to its router and to ``include_router``. The
    shortcut calls the endpoint with its path parameters, ``request``, ``engine``
    (:func:`get_serving_engine`), ``top_k`` (:data:`TopK`) and ``version``: anything else added
    at any level must be taught to the shortcut, or start-up fails with this message, instead of
    being silently skipped.
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
        "query": sorted({"top_k", "version"} - set(route.param_convertors)),
        "dependencies": [get_serving_engine],
        "other": [],
        "request": "request",
    }
    if declared != expected or route.dependencies or route.methods != {"POST"}:
        raise RuntimeError(f"ClassifyShortcut cannot answer {route.path} as declared "
                           f"({declared}); teach it the change or drop the shortcut")


class ClassifyShortcut:
    """Answers ``POST`` on the two classify routes without FastAPI's routing (pure ASGI).

    Measured worth: ``scripts/bench_request_overhead.py`` (docs/hardening.md). It is derived
    from the app's own routes, so the two cannot drift: it matches their path regexes, calls
    their endpoint, validates ``top_k`` with the declared :data:`TopK`, gets the engine from the
    declared dependency, and :func:`_check_declared` fails start-up if a route gains anything
    else, at the route, router, ``include_router`` or app level. It sits innermost among the
    middleware, so the request id, access log, API key and body limits apply as everywhere; it
    sets ``scope["route"]`` to the declared route (metric labels and logs name its template)
    and maps errors with :func:`service.http.errors.to_response`, as the exception handlers do.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        """``routes``: the FastAPI app's (``app.routes``). Starlette builds the middleware
        stack at the app's first event (its lifespan), after every router is included, so the
        check sees the routes as served."""
        self.app = app
        # As served: FastAPI keeps included routers lazily, and iter_route_contexts (what its
        # own OpenAPI generation walks) gives each route with its effective dependencies.
        served = routing.iter_route_contexts(routes) if hasattr(routing, "iter_route_contexts") \
            else routes
        self.routes: list[Any] = [route for route in served
                                  if getattr(route, "endpoint", None) is classify_images]
        if not self.routes:
            raise RuntimeError("ClassifyShortcut found no classify route to answer")
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
            engine = await get_serving_engine(request)
            params = match.groupdict()
            params.setdefault("version", request.query_params.get("version"))
            response = await route.endpoint(request=request, engine=engine, top_k=top_k,
                                            **params)
        except (ServiceError, RequestValidationError) as exc:
            response = to_response(exc, scope["path"])
        await response(scope, receive, send)
