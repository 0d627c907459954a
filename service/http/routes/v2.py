"""The Open Inference Protocol (KServe v2 / Triton HTTP): existing clients and tools, unchanged.

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]``
(metadata), ``.../ready``, ``.../config`` (Triton's model configuration) and
``POST .../infer``, with the ``binary_tensor_data``, ``classification`` and ``statistics``
(``GET /v2/models[/{name}[/versions/{v}]]/stats``, :mod:`service.statistics`) extensions. Inputs
are the model's own tensor (``image``, ``UINT8``, ``[N, H, W, C]``), so a client that already
preprocesses skips the service's image decoding; each image goes through the same dynamic
batcher as ``/v1`` requests. Errors are answered as the protocol says, ``{"error": "message"}``,
with 400, 404 or 503; a JSON request is validated against the protocol's schema
(``service.inference_protocol.InferenceRequestBody``) before it is read. What is not HTTP
(checking the tensor against the model, the answer tensors) is shared with gRPC:
:mod:`service.inference_protocol`, :mod:`service.protocol_infer`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from service import protocol_infer
from service.errors import NotReady
from service.http.deps import MetricsDep, RepositoryDep, Serving, ServingDep, SettingsDep
from service.inference_protocol import (
    EXTENSIONS,
    SERVER_NAME,
    InferenceRequestBody,
    config,
    metadata,
    tensor_spec,
)
from service.model_version import ModelVersion
from service.oip import HEADER_LENGTH, encode_infer_response, parse_infer_request
from service.statistics import model_statistics

HTTP_EXTENSIONS = ["binary_tensor_data", *EXTENSIONS]  # binary data: HTTP's own framing


class ProtocolErrorResponse(BaseModel):
    """The protocol's error answer."""

    error: str = Field(description="what went wrong and how to fix it")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ProtocolErrorResponse} for status in statuses}


# Errors take the protocol's shape on every /v2 path: service.http.errors.to_response picks it.
router = APIRouter(prefix="/v2", tags=["open inference protocol"],
                   responses=_errors(400, 401, 404, 405, 408, 413, 503))
# Larger JSON bodies are parsed in the decode pool, off the event loop.
INLINE_PARSE_BYTES = 64 * 1024


def _inline(schema: Any, definitions: dict[str, Any]) -> Any:
    """``schema`` with every ``$ref`` to ``definitions`` replaced by the definition."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(definitions[schema["$ref"].rsplit("/", 1)[1]], definitions)
        return {k: _inline(v, definitions) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, definitions) for v in schema]
    return schema


_REQUEST = InferenceRequestBody.model_json_schema()
# The body is read raw (JSON, or JSON then binary tensor data), so it is declared here.
_INFER_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inline(_REQUEST, _REQUEST.get("$defs", {}))},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": HTTP_EXTENSIONS}


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: every model loaded and warm")
async def ready(request: Request, repository: RepositoryDep) -> dict[str, bool]:
    if not repository.ready or request.app.state.starting:
        raise NotReady("the models are still loading (or one failed: see GET /readyz)")
    return {"ready": True}


@router.get("/models/stats", summary="Statistics of every model (Triton's extension)")
async def all_statistics(repository: RepositoryDep, metrics: MetricsDep) -> dict[str, Any]:
    # before /models/{name}, which would take "stats" for a name
    return model_statistics(metrics, [(v.name, v.version) for v in repository.all_versions()])


@router.get("/models/{name}", summary="Model metadata (default version)")
async def model_metadata(name: str, repository: RepositoryDep) -> dict[str, Any]:
    versions = repository.versions(name)
    return metadata(versions[0], versions)


@router.get("/models/{name}/versions/{version}", summary="Model metadata (one version)")
async def version_metadata(name: str, version: str, repository: RepositoryDep) -> dict[str, Any]:
    chosen = repository.get(name, version)
    return metadata(chosen, [chosen])


@router.get("/models/{name}/config", summary="Model configuration (default version)")
async def model_config(name: str, repository: RepositoryDep,
                       settings: SettingsDep) -> dict[str, Any]:
    return config(repository.get(name), settings)


@router.get("/models/{name}/versions/{version}/config",
            summary="Model configuration (one version)")
async def version_config(name: str, version: str, repository: RepositoryDep,
                         settings: SettingsDep) -> dict[str, Any]:
    return config(repository.get(name, version), settings)


@router.get("/models/{name}/ready", summary="Model readiness (default version)")
async def model_ready(name: str, repository: RepositoryDep) -> dict[str, Any]:
    chosen = repository.get(name)
    return {"name": chosen.name, "version": str(chosen.version), "ready": True}


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (one version)")
async def version_ready(name: str, version: str, repository: RepositoryDep) -> dict[str, Any]:
    chosen = repository.get(name, version)
    return {"name": chosen.name, "version": str(chosen.version), "ready": True}


class _Engine:
    """The engine's view an inference needs, from the app's parts."""

    def __init__(self, serving: Serving) -> None:
        self.settings, self.metrics, self.pool = serving.settings, serving.metrics, serving.pool
        self.batcher = serving.batcher

    async def infer(self, version: ModelVersion, arrays: list[np.ndarray]) -> list[Any]:
        return await self.batcher.submit_many(version, arrays)


async def _infer(version: ModelVersion, request: Request, serving: Serving) -> Response:
    spec = tensor_spec(version)
    request.state.model, request.state.version = version.name, version.version
    body = await request.body()
    read = functools.partial(parse_infer_request, body, request.headers.get(HEADER_LENGTH), spec,
                             version.output_name, len(version.labels),
                             serving.settings.max_images_per_request)
    parsed, outputs = await protocol_infer.infer(_Engine(serving), version, read,
                                                 offload=len(body) > INLINE_PARSE_BYTES)
    request.state.images = parsed.tensor.shape[0]
    content, header_length = encode_infer_response(version.name, version.version, parsed.id,
                                                   outputs)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(header_length)})


@router.post("/models/{name}/infer", summary="Inference (default version)",
             openapi_extra=_INFER_BODY)
async def infer(name: str, request: Request, serving: ServingDep) -> Response:
    version = serving.repository.get(name)  # held for the whole request, whatever a reload does
    return await _infer(version, request, serving)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference (one version)",
             openapi_extra=_INFER_BODY)
async def infer_version(name: str, version: str, request: Request,
                        serving: ServingDep) -> Response:
    return await _infer(serving.repository.get(name, version), request, serving)


@router.get("/models/{name}/stats", summary="Statistics of every version of a model")
async def statistics(name: str, repository: RepositoryDep,
                     metrics: MetricsDep) -> dict[str, Any]:
    return model_statistics(metrics, [(v.name, v.version) for v in repository.versions(name)])


@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of one version")
async def version_statistics(name: str, version: str, repository: RepositoryDep,
                             metrics: MetricsDep) -> dict[str, Any]:
    chosen = repository.get(name, version)
    return model_statistics(metrics, [(chosen.name, chosen.version)])
