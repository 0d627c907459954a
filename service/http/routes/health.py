"""Probes and the Prometheus scrape endpoint (no API key needed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.errors import NotReady
from service.http.deps import AnyEngineDep
from service.metrics import CONTENT_TYPE
from service.schemas import ErrorResponse, Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz(engine: AnyEngineDep) -> Health:
    """Alive whatever the models do; lists those loaded so far (all of them once ready)."""
    return Health(status="alive", models=[v.key for v in engine.repository.all_versions()])


@router.get("/readyz", response_model=Health, summary="Readiness: every model loaded and warm",
            responses={503: {"model": ErrorResponse}})
async def readyz(engine: AnyEngineDep) -> Health:
    """The engine's one readiness rule. The answer is public (no API key): what failed, with
    its files and paths, is in the server log, not here."""
    readiness = engine.readiness()
    if not readiness.ready:
        raise NotReady(readiness.reason)
    return Health(status="ready", models=[v.key for v in engine.repository.all_versions()])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(engine: AnyEngineDep) -> Response:
    return Response(engine.metrics.render(), media_type=CONTENT_TYPE)
