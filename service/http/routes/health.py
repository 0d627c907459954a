"""Probes and the Prometheus scrape endpoint (no API key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from service.errors import NotReady
from service.http.deps import MetricsDep, RepositoryDep
from service.metrics import CONTENT_TYPE
from service.schemas import ErrorResponse, Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz(repository: RepositoryDep) -> Health:
    """Alive whatever the models do; lists those loaded so far (all of them once ready)."""
    return Health(status="alive", models=[v.key for v in repository.all_versions()])


@router.get("/readyz", response_model=Health, summary="Readiness: every model loaded and warm",
            responses={503: {"model": ErrorResponse}})
async def readyz(request: Request, repository: RepositoryDep) -> Health:
    if not repository.loaded or request.app.state.starting:
        raise NotReady("the models are still loading")
    if repository.failures:
        # Public: which ones, not why (paths and file contents stay in the log and in the
        # answer of the authenticated POST /v1/repository/reload).
        failed = ", ".join(sorted(repository.failures))
        raise NotReady(f"not ready: {failed} failed to load (the reasons are in the service's "
                       "log and in the answer of POST /v1/repository/reload); fix or remove "
                       "them, then reload")
    return Health(status="ready", models=[v.key for v in repository.all_versions()])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(registry: MetricsDep) -> Response:
    return Response(registry.render(), media_type=CONTENT_TYPE)


# HEAD as well (probes and load balancers use it): the same endpoints, answered without a body.
for _route in [route for route in router.routes if isinstance(route, APIRoute)]:
    router.add_api_route(_route.path, _route.endpoint, methods=["HEAD"], include_in_schema=False)
