"""The Open Inference Protocol (KServe v2 / Triton HTTP): existing clients and tools, unchanged.

``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]``
(metadata), ``.../ready``, ``.../config`` (Triton's model configuration) and
``POST .../infer``, with the ``binary_tensor_data`` and ``classification`` extensions. Inputs
are the model's own tensor (``image``, ``UINT8``, ``[N, H, W, C]``), so a client that already
preprocesses skips the service's image decoding; each image goes through the same dynamic
batcher as ``/v1`` requests. Errors are answered as the protocol says, ``{"error": "message"}``,
with 400, 404 or 503.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from service.deps import BatcherDep, RepositoryDep, SettingsDep
from service.errors import NotReady, ServiceError
from service.oip import (
    EXTENSIONS,
    HEADER_LENGTH,
    ProtocolError,
    TensorSpec,
    encode_infer_response,
    parse_infer_request,
)
from service.repository import ModelVersion
from service.settings import Settings

SERVER_NAME = "convserve"
PLATFORM = "onnxruntime_onnx"


def protocol_error(exc: Exception) -> JSONResponse:
    """An exception as the protocol's error answer, ``{"error": "..."}``."""
    if isinstance(exc, ServiceError):
        return JSONResponse({"error": exc.message}, exc.status_code, headers=exc.headers)
    if isinstance(exc, RequestValidationError):
        return JSONResponse({"error": "; ".join(str(e.get("msg")) for e in exc.errors())}, 400)
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": str(exc.detail)}, exc.status_code,
                        headers=dict(exc.headers or {}))


class ProtocolRoute(APIRoute):
    """A route whose errors take the protocol's shape (the app's handlers use ``/v1``'s)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (ServiceError, RequestValidationError, HTTPException) as exc:
                return protocol_error(exc)

        return handle


router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=ProtocolRoute)


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


@router.get("/models/{name}", summary="Model metadata (newest version)")
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


@router.get("/models/{name}/config", summary="Model configuration (newest version)")
async def model_config(name: str, repository: RepositoryDep,
                       settings: SettingsDep) -> dict[str, Any]:
    return config(repository.get(name), settings)


@router.get("/models/{name}/versions/{version}/config",
            summary="Model configuration (one version)")
async def version_config(name: str, version: str, repository: RepositoryDep,
                         settings: SettingsDep) -> dict[str, Any]:
    return config(repository.get(name, version), settings)


@router.get("/models/{name}/ready", summary="Model readiness (newest version)")
async def model_ready(name: str, repository: RepositoryDep) -> dict[str, Any]:
    chosen = repository.get(name)
    return {"name": chosen.name, "version": str(chosen.version), "ready": True}


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (one version)")
async def version_ready(name: str, version: str, repository: RepositoryDep) -> dict[str, Any]:
    chosen = repository.get(name, version)
    return {"name": chosen.name, "version": str(chosen.version), "ready": True}


async def _infer(version: ModelVersion, request: Request, batcher: BatcherDep,
                 max_images: int) -> Response:
    spec = tensor_spec(version)
    request.state.model, request.state.version = version.name, version.version
    body = await request.body()
    parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), spec,
                                 version.output_name, len(version.labels))
    count = parsed.tensor.shape[0]
    if count > max_images:
        raise ProtocolError(f"batch of {count} images; at most {max_images} per request "
                            "(CONVSERVE_MAX_IMAGES_PER_REQUEST)")
    request.state.images = count
    rows = await batcher.submit_many(version, list(parsed.tensor))
    content, header_length = encode_infer_response(version.name, version.version, parsed,
                                                   np.stack(rows), version.labels)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(header_length)})


@router.post("/models/{name}/infer", summary="Inference (newest version)")
async def infer(name: str, request: Request, repository: RepositoryDep, batcher: BatcherDep,
                settings: SettingsDep) -> Response:
    version = repository.get(name)  # held for the whole request, whatever a reload does
    return await _infer(version, request, batcher, settings.max_images_per_request)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference (one version)")
async def infer_version(name: str, version: str, request: Request, repository: RepositoryDep,
                        batcher: BatcherDep, settings: SettingsDep) -> Response:
    chosen = repository.get(name, version)
    return await _infer(chosen, request, batcher, settings.max_images_per_request)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                  include_in_schema=False)
async def unknown(path: str, request: Request) -> Response:
    """Anything else under /v2, answered in the protocol's shape."""
    return JSONResponse({"error": f"no such endpoint: {request.method} /v2/{path}; the "
                                  "protocol's endpoints are listed at /docs"}, 404)
