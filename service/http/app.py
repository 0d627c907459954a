"""``create_app``: the FastAPI application, its lifespan, middleware and routers.

Models load in the lifespan, in a background thread, never at import: ``/healthz`` answers at once
and ``/readyz`` says 503 until every model has loaded and answered its warm-up run. On shutdown
(SIGTERM: uvicorn first finishes the requests it accepted) the batcher drains its queues.

Every module in ``service/http/routes/`` that defines ``router`` is included, so a new resource is a
new file there, with no change here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI

import service.http.routes
from service.batching import Batcher
from service.detection import DetectionSlots
from service.errors import ReloadIncomplete
from service.http.errors import register_error_handlers
from service.http.middleware import ApiKeyAuth, BodyLimit, RequestLog
from service.http.openapi_auth import document_bearer_auth
from service.http.routes.classify import ClassifyShortcut
from service.metrics import Metrics
from service.repository import ModelRepository, ScanResult
from service.settings import Settings, load_settings

if TYPE_CHECKING:
    from service.workers import WorkerSync

logger = logging.getLogger("convserve.app")


async def reload_models(app: FastAPI) -> ScanResult:
    """Scan ``models_dir`` once (in a thread), update metrics, retire removed versions."""
    state = app.state
    async with state.reload_lock:
        result = await asyncio.to_thread(state.repository.scan)
        metrics: Metrics = state.metrics
        for version in result.added:
            metrics.model_loaded(version.name, version.version, version.task,
                                 version.providers[0], version.load_seconds)
            if version.batch_sizes and state.batcher is not None:
                await state.batcher.open(version)  # GPU: warm its inference threads now
        for version in result.removed:
            metrics.model_unloaded(version.name, version.version)
            if state.batcher is not None:
                await state.batcher.retire(version)  # what is queued still finishes
        return result


async def reload_all_workers(app: FastAPI) -> ScanResult:
    """``POST /v1/repository/reload``: reload here and, with ``--workers N``, in every worker,
    answering once all serve the result (see :mod:`service.workers`).

    Raises:
        ReloadIncomplete: a worker had not reloaded after ``reload_wait_s``.
    """
    sync: WorkerSync | None = app.state.sync
    if sync is None:
        return await reload_models(app)
    generation = sync.bump()
    result = await reload_models(app)
    sync.applied(generation)
    behind = await sync.wait_for(generation, app.state.settings.reload_wait_s)
    if behind:
        raise ReloadIncomplete(
            f"this worker reloaded but worker(s) {', '.join(map(str, behind))} had not after "
            f"{app.state.settings.reload_wait_s:g} s (CONVSERVE_RELOAD_WAIT_S); they go on "
            "loading: check the logs, then POST /v1/repository/reload again")
    return result


async def _initial_load(app: FastAPI) -> None:
    sync: WorkerSync | None = app.state.sync
    generation = 0
    try:
        while True:  # a worker: again if another worker asked for a reload during the scan
            generation = sync.generation() if sync else 0
            result = await reload_models(app)
            if sync is None or sync.generation() == generation:
                break
    except Exception:
        logger.exception("loading the models failed; /readyz stays 503")
        return
    finally:
        app.state.starting = False  # loaded, and inference threads warm
        if sync is not None:
            sync.applied(generation)  # from now on it follows the other workers' reloads
    if result.failed:
        logger.error("not ready: %d model version(s) failed to load: %s", len(result.failed),
                     "; ".join(f"{k}: {v}" for k, v in result.failed.items()))
    else:
        loaded = len(app.state.repository.all_versions())
        settings: Settings = app.state.settings
        if not loaded and not settings.allow_empty:
            logger.warning("ready with NO models: %s holds no <name>/<version>/model.json; set "
                           "CONVSERVE_MODELS_DIR to the right directory, or "
                           "CONVSERVE_ALLOW_EMPTY=true if none is intended",
                           settings.models_dir.resolve())
        else:
            logger.info("ready: %d model version(s) loaded", loaded)


async def _poll(app: FastAPI, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await reload_models(app)
        except Exception:
            logger.exception("polling %s for new models failed", app.state.settings.models_dir)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the batcher and decode pool, load the models in the background; drain on exit."""
    settings: Settings = app.state.settings
    app.state.decode_pool = ThreadPoolExecutor(settings.decode_threads, "decode")
    app.state.detection = DetectionSlots(settings.detect_threads, settings.max_pending_detections,
                                         settings.retry_after_s)
    app.state.batcher = Batcher(
        max_batch_size=settings.max_batch_size, max_queue_delay_ms=settings.max_queue_delay_ms,
        max_queue_size=settings.max_queue_size, retry_after_s=settings.retry_after_s,
        metrics=app.state.metrics, instances=settings.instances)
    tasks = [asyncio.create_task(_initial_load(app), name="load-models")]
    if settings.reload_interval_s > 0:
        tasks.append(asyncio.create_task(_poll(app, settings.reload_interval_s), name="poll"))
    if app.state.sync is not None:
        tasks.append(asyncio.create_task(app.state.sync.follow(lambda: reload_models(app)),
                                         name="follow-reloads"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        batcher, pool, detection = app.state.batcher, app.state.decode_pool, app.state.detection
        app.state.detection = None
        await asyncio.to_thread(detection.shutdown)  # running detections queue their faces
        await batcher.close()  # finishes every queued input
        app.state.batcher = app.state.decode_pool = None
        pool.shutdown(wait=True)
        logger.info("stopped: queues drained")


def discover_routers() -> list[APIRouter]:
    """The ``router`` of every module in ``service/http/routes/``, by module name."""
    routers = []
    for info in sorted(pkgutil.iter_modules(service.http.routes.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"service.http.routes.{info.name}")
        router = getattr(module, "router", None)
        if isinstance(router, APIRouter):
            routers.append(router)
    return routers


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application. ``settings`` default to :func:`load_settings` (the environment)."""
    settings = settings or load_settings()
    app = FastAPI(title="convserve", version="0.1.0", lifespan=lifespan,
                  description="CNN image classification served by ONNX Runtime",
                  docs_url=None, redoc_url=None)  # routes/docs.py: the same pages, offline
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.repository = ModelRepository(settings)
    app.state.batcher = None
    app.state.decode_pool = None
    app.state.detection = None
    app.state.reload_lock = asyncio.Lock()
    app.state.reload_models = functools.partial(reload_all_workers, app)  # for the reload route
    app.state.starting = True  # until the first load has finished (see /readyz)
    app.state.sync = None  # a WorkerSync with --workers N (service.workers sets it)
    register_error_handlers(app)
    for router in discover_routers():
        app.include_router(router)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(ClassifyShortcut)  # added first = innermost
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       read_timeout_s=settings.body_read_timeout_s,
                       max_pending_bytes=settings.max_pending_upload_bytes,
                       retry_after_s=settings.retry_after_s)
    app.add_middleware(ApiKeyAuth, api_key=key)
    if key:
        document_bearer_auth(app)  # Swagger UI's Authorize button
    app.add_middleware(RequestLog, metrics=app.state.metrics)  # added last = outermost
    return app
