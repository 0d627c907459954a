"""``POST /v1/repository/reload``: pick up new, changed or removed version directories."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.app import reload_models
from service.schemas import ReloadResponse

router = APIRouter(prefix="/v1/repository", tags=["repository"])


@router.post("/reload", response_model=ReloadResponse, summary="Rescan the models directory")
async def reload_repository(request: Request) -> ReloadResponse:
    result = await reload_models(request.app)
    return ReloadResponse(
        added=[v.key for v in result.added], removed=[v.key for v in result.removed],
        failed=result.failed, models=[v.key for v in request.app.state.repository.all_versions()])
