"""``Annotated`` dependency aliases: what a route needs from the app, typed.

Routes declare ``repository: RepositoryDep`` and so on; everything lives in ``app.state``, set up
by :func:`service.http.app.create_app` and its lifespan. The functions are ``async`` on purpose:
FastAPI runs plain ``def`` dependencies in a worker thread, one thread hop each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.batching import Batcher
from service.errors import NotReady
from service.metrics import Metrics
from service.repository import ModelRepository, ScanResult
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_repository(request: Request) -> ModelRepository:
    return request.app.state.repository


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_batcher(request: Request) -> Batcher:
    batcher = request.app.state.batcher
    if batcher is None:
        raise NotReady("the service is starting or stopping; retry in a moment")
    return batcher


async def get_decode_pool(request: Request) -> Executor:
    pool = request.app.state.decode_pool
    if pool is None:
        raise NotReady("the service is starting or stopping; retry in a moment")
    return pool


async def get_reload(request: Request) -> Callable[[], Awaitable[ScanResult]]:
    """``service.http.app.reload_all_workers`` bound to this app (set by ``create_app``; routes do
    not import the app module, which imports them)."""
    return request.app.state.reload_models


@dataclass(frozen=True)
class Serving:
    """Everything a model-serving route needs, in one dependency (each FastAPI dependency costs
    CPU per request to resolve; docs/service-architecture.md)."""

    settings: Settings
    repository: ModelRepository
    batcher: Batcher
    pool: Executor  # the decode pool
    metrics: Metrics


async def get_serving(request: Request) -> Serving:
    state = request.app.state
    if state.batcher is None or state.decode_pool is None:
        raise NotReady("the service is starting or stopping; retry in a moment")
    if state.starting:  # loaded, maybe, but not yet warm
        raise NotReady("the models are still loading; retry when GET /readyz answers 200")
    return Serving(state.settings, state.repository, state.batcher, state.decode_pool,
                   state.metrics)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
DecodePoolDep = Annotated[Executor, Depends(get_decode_pool)]
ServingDep = Annotated[Serving, Depends(get_serving)]
ReloadDep = Annotated[Callable[[], Awaitable[ScanResult]], Depends(get_reload)]
