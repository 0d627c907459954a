"""The Open Inference Protocol (KServe v2 / Triton HTTP): existing clients and tools, unchanged.

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]``
(metadata), ``.../ready``, ``.../config`` (Triton's model configuration) and
``POST .../infer``, with the ``binary_tensor_data`` and ``classification`` extensions. Inputs
are the model's own tensor (``image``, ``UINT8``, ``[N, H, W, C]``), so a client that already
preprocesses skips the service's image decoding; each image goes through the same dynamic
batcher as ``/v1`` requests. Errors are answered as the protocol says, ``{"error": "message"}``,
with 400, 404 or 503; a JSON request is validated against the protocol's schema
(``service.oip.InferenceRequestBody``) before it is read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from service.errors import NotReady
from service.http.deps import BatcherDep, DecodePoolDep, RepositoryDep, SettingsDep
from service.model_version import ModelVersion
from service.oip import (
    EXTENSIONS,
    HEADER_LENGTH,
    InferenceRequestBody,
    TensorSpec,
    encode_infer_response,
    parse_infer_request,
)
from service.settings import Settings

SERVER_NAME = "convserve"
PLATFORM = "onnxruntime_onnx"


class ProtocolErrorResponse(BaseModel):
    """The protocol's error answer."""

    error: str = Field(description="what went wrong and how to fix it")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ProtocolErrorResponse} for status in statuses}


# Errors take the protocol's shape on every /v2 path: service.http.errors.to_response picks it.
router = APIRouter(prefix="/v2", tags=["open inference protocol"],
                   responses=_errors(400, 401, 404, 405, 408, 413, 503))
# Larger JSON bodies are parsed, and larger answers encoded, in the decode pool, off the loop.
INLINE_PARSE_BYTES = 64 * 1024
INLINE_ENCODE_VALUES = 16 * 1024  # output values (images x classes)


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


def tensor_spec(version: ModelVersion) -> TensorSpec:
    """The model's input tensor, without the batch axis."""
    version.require_classifier()
    assert version.input is not None
    spec = version.input
    return TensorSpec(version.input_name, "UINT8", (spec.height, spec.width, spec.channels))


def metadata(version: ModelVersion, versions: list[ModelVersion]) -> dict[str, Any]:
    """The protocol's model metadata for ``version`` (listing ``versions``)."""
    answer: dict[str, Any] = {"name": version.name,
                              "versions": [str(v.version) for v in versions],
                              "platform": PLATFORM, "parameters": {"task": version.task}}
    if version.input is None:  # a multi-graph detector: no single input tensor to describe
        answer.update(inputs=[], outputs=[])
        return answer
    spec = version.input
    answer["inputs"] = [{"name": version.input_name, "datatype": "UINT8",
                         "shape": [-1, spec.height, spec.width, spec.channels]}]
    answer["outputs"] = [{"name": version.output_name, "datatype": "FP32",
                          "shape": [-1, len(version.labels) or -1]}]
    return answer


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: every model loaded and warm")
async def ready(request: Request, repository: RepositoryDep) -> dict[str, bool]:
    if not repository.ready or request.app.state.starting:
        raise NotReady("the models are still loading (or one failed: see GET /readyz)")
    return {"ready": True}


@router.get("/models/{name}", summary="Model metadata (default version)")
async def model_metadata(name: str, repository: RepositoryDep) -> dict[str, Any]:
    versions = repository.versions(name)
    return metadata(versions[0], versions)


@router.get("/models/{name}/versions/{version}", summary="Model metadata (one version)")
async def version_metadata(name: str, version: str, repository: RepositoryDep) -> dict[str, Any]:
    chosen = repository.get(name, version)
    return metadata(chosen, [chosen])


def config(version: ModelVersion, settings: Settings) -> dict[str, Any]:
    """A Triton-style model configuration, for tools that ask for one (e.g. perf_analyzer)."""
    spec = tensor_spec(version)
    return {"name": version.name, "platform": PLATFORM, "backend": "onnxruntime",
            "max_batch_size": settings.max_batch_size,
            "input": [{"name": spec.name, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC",
                       "dims": list(spec.shape)}],
            "output": [{"name": version.output_name, "data_type": "TYPE_FP32",
                        "dims": [len(version.labels)]}],
            "dynamic_batching": {"max_queue_delay_microseconds":
                                 int(settings.max_queue_delay_ms * 1000)}}


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


async def _infer(version: ModelVersion, request: Request, batcher: BatcherDep,
                 pool: DecodePoolDep, max_images: int) -> Response:
    spec = tensor_spec(version)
    request.state.model, request.state.version = version.name, version.version
    body = await request.body()
    arguments = (body, request.headers.get(HEADER_LENGTH), spec, version.output_name,
                 len(version.labels), max_images)
    if len(body) <= INLINE_PARSE_BYTES:
        parsed = parse_infer_request(*arguments)
    else:
        parsed = await asyncio.get_running_loop().run_in_executor(
            pool, parse_infer_request, *arguments)
    request.state.images = parsed.tensor.shape[0]  # at most max_images: checked by the parser
    rows = np.stack(await batcher.submit_many(version, list(parsed.tensor)))
    encoding = (version.name, version.version, parsed, rows, version.labels)
    if rows.size <= INLINE_ENCODE_VALUES:
        content, header_length = encode_infer_response(*encoding)
    else:
        content, header_length = await asyncio.get_running_loop().run_in_executor(
            pool, encode_infer_response, *encoding)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(header_length)})


@router.post("/models/{name}/infer", summary="Inference (default version)",
             openapi_extra=_INFER_BODY)
async def infer(name: str, request: Request, repository: RepositoryDep, batcher: BatcherDep,
                pool: DecodePoolDep, settings: SettingsDep) -> Response:
    version = repository.get(name)  # held for the whole request, whatever a reload does
    return await _infer(version, request, batcher, pool, settings.max_images_per_request)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference (one version)",
             openapi_extra=_INFER_BODY)
async def infer_version(name: str, version: str, request: Request, repository: RepositoryDep,
                        batcher: BatcherDep, pool: DecodePoolDep,
                        settings: SettingsDep) -> Response:
    chosen = repository.get(name, version)
    return await _infer(chosen, request, batcher, pool, settings.max_images_per_request)
