"""``GET /v1/models``: what is loaded, how, and on which execution provider."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from model_format import ClassifierCard
from service.explain import methods_of
from service.http.deps import RepositoryDep
from service.model_version import ModelVersion, int8_note
from service.repository import ModelRepository
from service.schemas import ErrorResponse, ModelInfo, ModelList, VersionInfo
from service.tuning import batching_info

router = APIRouter(prefix="/v1/models", tags=["models"],
                   responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})


def describe(version: ModelVersion) -> VersionInfo:
    """The public description of one loaded version."""
    card = version.card
    labels = version.labels
    return VersionInfo(
        name=version.name, version=version.version, task=version.task, labels=labels,
        num_classes=len(labels), input=_dump(card.input),
        output=_dump(card.output), metrics=_dump(card.metrics),
        provider=version.providers[0], providers=version.providers,
        load_seconds=round(version.load_seconds, 4),
        max_batch_size=version.max_batch,
        batch_costs_ms={str(size): ms for size, ms in version.batch_costs.items()},
        files={key: session.path.name for key, session in version.sessions.items()},
        explain=methods_of(version),
        quantization=_dump(card.quantization) if isinstance(card, ClassifierCard)
        and card.quantization else None,
        notes=[note] if (note := int8_note(version)) else [],
        batching=batching_info(version.batching) if version.batching else None)


def _dump(part: BaseModel | dict[str, Any]) -> dict[str, Any]:
    return part.model_dump(mode="json", exclude_unset=True) if isinstance(part, BaseModel) else part


def _model_info(repository: ModelRepository, name: str) -> ModelInfo:
    default, pinned = repository.default_version(name)
    return ModelInfo(name=name, default_version=default, pinned=pinned,
                     versions=[describe(v) for v in repository.versions(name)])


@router.get("", response_model=ModelList, summary="Every model and its versions")
async def list_models(repository: RepositoryDep) -> ModelList:
    return ModelList(models=[_model_info(repository, name) for name in repository.names()])


@router.get("/{name}", response_model=ModelInfo, summary="One model and its versions")
async def get_model(name: str, repository: RepositoryDep) -> ModelInfo:
    return _model_info(repository, name)


@router.get("/{name}/versions/{version}", response_model=VersionInfo,
            summary="One version of a model")
async def get_version(name: str, version: str, repository: RepositoryDep) -> VersionInfo:
    return describe(repository.get(name, version))
