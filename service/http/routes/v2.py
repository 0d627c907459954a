"""The Open Inference Protocol (KServe v2 / Triton HTTP): existing clients and tools, unchanged.

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]``
(metadata), ``.../ready``, ``.../config`` (Triton's model configuration) and
``POST .../infer``, with the ``binary_tensor_data``, ``classification`` and ``statistics``
(``GET /v2/models[/{name}[/versions/{v}]]/stats``, :mod:`service.statistics`) extensions. Inputs
are the model's own tensor (``image``, ``UINT8``, ``[N, H, W, C]``), so a client that already
preprocesses skips the service's image decoding; each image goes through the same dynamic
batcher as ``/v1`` requests. Errors are answered as the protocol says, ``{"error": "message"}``,
with 400, 404 or 503; a JSON request is validated against the protocol's schema
(``service.oip.InferenceRequestBody``) before it is read.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Request, Response

from model_format import Capability
from service import protocol_infer
from service.errors import NotReady
from service.http.deps import AnyEngineDep, EngineDep
from service.http.openapi import V2_ERRORS, errors, versioned
from service.inference_protocol import (
    EXTENSIONS,
    SERVER_NAME,
    InferenceRequestBody,
    config,
    metadata,
    tensor_spec,
)
from service.oip import HEADER_LENGTH, encode_infer_response, parse_infer_request
from service.statistics import model_statistics

HTTP_EXTENSIONS = ["binary_tensor_data", *EXTENSIONS]  # binary data: HTTP's own framing

# Errors take the protocol's shape on every /v2 path: service.http.errors.to_response picks it.
router = APIRouter(prefix="/v2", tags=["open inference protocol"],
                   responses=errors(*V2_ERRORS, protocol=True))
# Larger JSON bodies are parsed, and larger answers encoded, in the decode pool, off the loop.
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
async def ready(engine: AnyEngineDep) -> dict[str, bool]:
    readiness = engine.readiness()
    if not readiness.ready:
        raise NotReady(readiness.reason)
    return {"ready": True}


@router.get("/models/stats", summary="Statistics of every model (Triton's extension)")
async def all_statistics(engine: AnyEngineDep) -> dict[str, Any]:
    # declared before /models/{name}, which would take "stats" for a name
    versions = engine.repository.all_versions()
    return model_statistics(engine.metrics, [(v.name, v.version) for v in versions])


@versioned(router, "GET", "/stats", "Statistics (Triton's extension)", base="/models")
async def statistics(name: str, engine: AnyEngineDep,
                     version: str | None = None) -> dict[str, Any]:
    """Every loaded version of the model, or the one named."""
    chosen = engine.versions(name) if version is None else [engine.get(name, version)]
    return model_statistics(engine.metrics, [(v.name, v.version) for v in chosen])


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
    request.state.model, request.state.version = chosen.name, chosen.version
    body = await request.body()
    read = functools.partial(parse_infer_request, body, request.headers.get(HEADER_LENGTH),
                             tensor_spec(chosen), chosen.output_name, len(chosen.labels),
                             engine.settings.max_images_per_request)
    parsed, outputs = await protocol_infer.infer(engine, chosen, read,
                                                 offload=len(body) > INLINE_PARSE_BYTES)
    request.state.images = parsed.tensor.shape[0]
    encoding = (chosen.name, chosen.version, parsed.id, outputs)
    if sum(tensor.values.size for tensor in outputs) <= protocol_infer.INLINE_ENCODE_VALUES:
        content, header_length = encode_infer_response(*encoding)
    else:
        content, header_length = await engine.in_pool(encode_infer_response, *encoding)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(header_length)})
