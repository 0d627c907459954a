"""``POST /v1/repository/reload``: pick up new, changed or removed version directories."""

from __future__ import annotations

from fastapi import APIRouter

from service.http.deps import AnyEngineDep
from service.schemas import ReloadResponse

router = APIRouter(prefix="/v1/repository", tags=["repository"])


@router.post("/reload", response_model=ReloadResponse, summary="Rescan the models directory",
             description="With several workers, answers once every worker serves the result.")
async def reload_repository(engine: AnyEngineDep) -> ReloadResponse:
    result = await engine.reload()
    return ReloadResponse(
        added=[v.key for v in result.added], removed=[v.key for v in result.removed],
        failed=result.failed, models=[v.key for v in engine.repository.all_versions()])
