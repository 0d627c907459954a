"""``create_app``: the FastAPI application over one :class:`service.engine.Engine`, its
lifespan, middleware and routers. It wires; it serves nothing itself.

The engine starts in the lifespan and loads the models in the background, never at import:
``/healthz`` answers at once and ``/readyz`` says 503 until every model has loaded and answered
its warm-up run. On shutdown (SIGTERM: uvicorn first finishes the requests it accepted) the
engine drains its queues.

Every module in ``service/http/routes/`` that defines ``router`` is included, so a new resource
is a new file there, with no change here.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

import service.http.routes
from service import tracing
from service.engine import Engine
from service.http.errors import register_error_handlers
from service.http.methods import HeadAsGet
from service.http.middleware import ApiKeyAuth, BodyLimit, RequestLog, Tracing
from service.http.openapi_auth import document_bearer_auth
from service.http.routes.classify import ClassifyShortcut
from service.settings import Settings, load_settings


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the engine (it loads the models in the background); drain it on exit."""
    engine: Engine = app.state.engine
    await engine.start()
    try:
        yield
    finally:
        await engine.close()


def discover_routers() -> list[APIRouter]:
    """The ``router`` of every module in ``service/http/routes/``, by module name."""
    routers = []
    for info in sorted(pkgutil.iter_modules(service.http.routes.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"service.http.routes.{info.name}")
        router = getattr(module, "router", None)
        if isinstance(router, APIRouter):
            routers.append(router)
    return routers


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The application over ``engine`` (default: a new one on ``settings``, which default to
    :func:`load_settings`, the environment). ``app.state.engine`` is all the state it has."""
    engine = engine or Engine(settings or load_settings())
    settings = engine.settings
    app = FastAPI(title="convserve", version="0.1.0", lifespan=lifespan,
                  description="CNN image classification served by ONNX Runtime",
                  docs_url=None, redoc_url=None)  # routes/docs.py: the same pages, offline
    app.state.engine = engine
    register_error_handlers(app)
    for router in discover_routers():
        app.include_router(router)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(HeadAsGet)  # added first = innermost
    app.add_middleware(ClassifyShortcut, routes=app.routes)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       read_timeout_s=settings.body_read_timeout_s,
                       max_pending_bytes=settings.max_pending_upload_bytes,
                       retry_after_s=settings.retry_after_s, min_rate=settings.body_min_rate)
    app.add_middleware(ApiKeyAuth, api_key=key)
    if tracing.TRACER is not None:  # OTEL_* asked for traces (service/tracing.py)
        app.add_middleware(Tracing)
    if key:
        document_bearer_auth(app)  # Swagger UI's Authorize button
    app.add_middleware(RequestLog, metrics=engine.metrics)  # added last = outermost
    return app
