"""``GET /v1/models``: what is loaded, how, and on which execution provider."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from model_format import ClassifierCard
from service.engine import Engine
from service.explain import methods_of
from service.http.deps import AnyEngineDep
from service.http.openapi import errors
from service.model_version import ModelVersion, int8_note
from service.schemas import ModelInfo, ModelList, VersionInfo
from service.tuning import batching_info

router = APIRouter(prefix="/v1/models", tags=["models"], responses=errors(404, 503))


def describe(version: ModelVersion) -> VersionInfo:
    """The public description of one loaded version."""
    card = version.card
    labels = version.labels
    return VersionInfo(
        name=version.name, version=version.version, task=version.task, labels=labels,
        capabilities=sorted(version.capabilities),
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


def _model_info(engine: Engine, name: str) -> ModelInfo:
    default, pinned = engine.default_version(name)
    return ModelInfo(name=name, default_version=default, pinned=pinned,
                     versions=[describe(v) for v in engine.versions(name)])


@router.get("", response_model=ModelList, summary="Every model and its versions")
async def list_models(engine: AnyEngineDep) -> ModelList:
    return ModelList(models=[_model_info(engine, name) for name in engine.repository.names()])


@router.get("/{name}", response_model=ModelInfo, summary="One model and its versions")
async def get_model(name: str, engine: AnyEngineDep) -> ModelInfo:
    return _model_info(engine, name)


@router.get("/{name}/versions/{version}", response_model=VersionInfo,
            summary="One version of a model")
async def get_version(name: str, version: str, engine: AnyEngineDep) -> VersionInfo:
    return describe(engine.get(name, version))
