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

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from model_format import Capability
from service.errors import NotReady
from service.http.deps import AnyEngineDep, EngineDep
from service.http.openapi import V2_ERRORS, errors, versioned
from service.model_version import ModelVersion
from service.oip import (
    EXTENSIONS,
    HEADER_LENGTH,
    InferenceRequestBody,
    TensorSpec,
    encode_infer_response,
    parse_infer_request,
)

SERVER_NAME = "convserve"
PLATFORM = "onnxruntime_onnx"

# Errors take the protocol's shape on every /v2 path: service.http.errors.to_response picks it.
router = APIRouter(prefix="/v2", tags=["open inference protocol"],
                   responses=errors(*V2_ERRORS, protocol=True))
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
    version.require(Capability.CLASSIFY)
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


def config(version: ModelVersion, max_queue_delay_ms: float) -> dict[str, Any]:
    """A Triton-style model configuration, for tools that ask for one (e.g. perf_analyzer);
    ``max_batch_size`` is the version's own cap, as ``/v1/models`` reports it."""
    spec = tensor_spec(version)
    return {"name": version.name, "platform": PLATFORM, "backend": "onnxruntime",
            "max_batch_size": version.max_batch or 0,
            "input": [{"name": spec.name, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC",
                       "dims": list(spec.shape)}],
            "output": [{"name": version.output_name, "data_type": "TYPE_FP32",
                        "dims": [len(version.labels)]}],
            "dynamic_batching": {"max_queue_delay_microseconds":
                                 int(max_queue_delay_ms * 1000)}}


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: every model loaded and warm")
async def ready(engine: AnyEngineDep) -> dict[str, bool]:
    readiness = engine.readiness()
    if not readiness.ready:
        raise NotReady(readiness.reason)
    return {"ready": True}


@versioned(router, "GET", "", "Model metadata", base="/models")
async def model_metadata(name: str, engine: AnyEngineDep,
                         version: str | None = None) -> dict[str, Any]:
    """The version that answers (the pinned default when none is named): the one ``infer``
    runs. ``versions`` lists every loaded version for the default path."""
    chosen = engine.get(name, version)
    return metadata(chosen, engine.versions(name) if version is None else [chosen])


@versioned(router, "GET", "/config", "Model configuration", base="/models")
async def model_config(name: str, engine: AnyEngineDep,
                       version: str | None = None) -> dict[str, Any]:
    return config(engine.get(name, version), engine.settings.max_queue_delay_ms)


@versioned(router, "GET", "/ready", "Model readiness", base="/models")
async def model_ready(name: str, engine: AnyEngineDep,
                      version: str | None = None) -> dict[str, Any]:
    chosen = engine.get(name, version)
    return {"name": chosen.name, "version": str(chosen.version), "ready": True}


@versioned(router, "POST", "/infer", "Inference", base="/models",
           openapi_extra=_INFER_BODY)
async def infer(name: str, request: Request, engine: EngineDep,
                version: str | None = None) -> Response:
    chosen = engine.get(name, version, Capability.CLASSIFY)  # held for the whole request
    spec = tensor_spec(chosen)
    request.state.model, request.state.version = chosen.name, chosen.version
    body = await request.body()
    max_images = engine.settings.max_images_per_request
    arguments = (body, request.headers.get(HEADER_LENGTH), spec, chosen.output_name,
                 len(chosen.labels), max_images)  # the batch size is checked before the tensor
    if len(body) <= INLINE_PARSE_BYTES:
        parsed = parse_infer_request(*arguments)
    else:
        parsed = await engine.in_pool(parse_infer_request, *arguments)
    request.state.images = parsed.tensor.shape[0]
    rows = np.stack(await engine.infer(chosen, list(parsed.tensor)))
    encoding = (chosen.name, chosen.version, parsed, rows, chosen.labels)
    if rows.size <= INLINE_ENCODE_VALUES:
        content, header_length = encode_infer_response(*encoding)
    else:
        content, header_length = await engine.in_pool(encode_infer_response, *encoding)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(header_length)})
