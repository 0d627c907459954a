"""``POST /v1/models/{name}/classify``: images in, top-k classes out, in the order sent."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from service.deps import Serving, ServingDep
from service.pipeline import classify, prepare_uploads, read_uploads
from service.repository import ModelVersion
from service.schemas import ClassifyResponse, ErrorResponse

router = APIRouter(prefix="/v1/models", tags=["classify"], responses={
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503)})

TopK = Annotated[int, Query(ge=1, le=1000, description="how many classes to return per image")]

_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}


async def _classify(version: ModelVersion, request: Request, top_k: int,
                    serving: Serving) -> Response:
    version.require_classifier()
    assert version.input is not None
    request.state.model, request.state.version = version.name, version.version
    uploads = await read_uploads(request, serving.settings.max_images_per_request)
    request.state.images = len(uploads)
    arrays = await prepare_uploads(uploads, version.input, serving.pool,
                                   serving.settings.max_image_pixels, serving.metrics,
                                   (version.name, str(version.version)))
    results = await classify(version, arrays, uploads, serving.batcher, top_k)
    answer = ClassifyResponse.model_construct(model=version.name, version=version.version,
                                              results=results)
    # Serialised once here: FastAPI would validate the finished model again.
    return Response(answer.model_dump_json(), media_type="application/json")


@router.post("/{name}/classify", response_model=ClassifyResponse, openapi_extra=_BODY,
             summary="Classify images with the newest version")
async def classify_latest(name: str, request: Request, serving: ServingDep,
                          top_k: TopK = 5) -> Response:
    version = serving.repository.get(name)  # held for the whole request, whatever a reload does
    return await _classify(version, request, top_k, serving)


@router.post("/{name}/versions/{version}/classify", response_model=ClassifyResponse,
             openapi_extra=_BODY, summary="Classify images with one version")
async def classify_version(name: str, version: str, request: Request, serving: ServingDep,
                           top_k: TopK = 5) -> Response:
    chosen = serving.repository.get(name, version)
    return await _classify(chosen, request, top_k, serving)
