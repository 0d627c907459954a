"""``/v1/models/{name}/first-layer``: the first convolution's filters, and its maps of a photo.

``GET``: every filter of the first convolution as a small image (read from the ONNX weights).
``POST`` with one image (uploads as classify): the same, plus the ``count`` feature maps with the
highest mean activation for that image, as grey PNG data URLs. :mod:`service.layers` does the work,
in the decode pool.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from service import imaging, layers
from service.errors import InvalidParameter
from service.explain import require_method
from service.http.deps import Serving, ServingDep
from service.http.uploads import read_uploads
from service.model_version import ModelVersion
from service.schemas import ErrorResponse

router = APIRouter(prefix="/v1/models", tags=["explain"], responses={
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503)})

CountParam = Annotated[int, Query(ge=1, le=layers.MAX_MAPS,
                                  description="feature maps to return (the strongest)")]
_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}


class FeatureMap(BaseModel):
    index: int = Field(description="the filter that made it")
    mean: float = Field(description="its mean activation")
    image: str = Field(description="grey PNG data URL, white strongest")


class FirstLayerResponse(BaseModel):
    model: str
    version: int
    layer: str = Field(description="the convolution's node name in the graph")
    activation: str | None = Field(description="the activation after it, whose output the maps are")
    shape: list[int] = Field(description="[filters, channels, height, width]")
    stride: list[int]
    filters: list[list[list[list[float]]]] = Field(
        description="each filter [height][width][channels], [0, 1]: 0.5 is zero weight")
    feature_maps: list[FeatureMap] = Field(default_factory=list,
                                           description="POST only: the strongest, strongest first")
    map_size: list[int] | None = Field(default=None, description="[height, width] of each map")


def _describe(version: ModelVersion, serving: Serving, data: bytes | None,
              count: int) -> FirstLayerResponse:
    """Blocking: read the graph (first time), and run the photo through its first layer."""
    layer = layers.first_layer(version, serving.settings)  # the graph loaded, not the file
    body = FirstLayerResponse(
        model=version.name, version=version.version, layer=layer.node,
        activation=layer.activation, shape=list(layer.weight.shape), stride=list(layer.stride),
        filters=layers.filter_images(layer.weight))
    if data is not None:
        assert version.input is not None
        array = imaging.prepare(data, version.input, serving.settings.max_image_pixels).array
        maps = layer.feature_maps(array)
        body.feature_maps = [
            FeatureMap(index=i, mean=float(maps[i].mean()), image=layers.map_png(maps[i]))
            for i in layers.strongest(maps, count)]
        body.map_size = list(maps.shape[1:])
    return body


async def answer(request: Request, serving: Serving, name: str, version: str | None,
                 count: int, with_image: bool) -> FirstLayerResponse:
    chosen = serving.repository.get(name, version)
    request.state.model, request.state.version = chosen.name, chosen.version
    require_method(chosen)  # classifiers only: a detector says so (422)
    data = None
    if with_image:
        uploads = await read_uploads(request, serving.settings.max_images_per_request)
        if len(uploads) != 1:
            raise InvalidParameter(f"first-layer takes one image per request, not {len(uploads)}")
        data = uploads[0].data
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(serving.pool, _describe, chosen, serving, data, count)


@router.get("/{name}/first-layer", response_model=FirstLayerResponse,
            summary="The first convolution's filters (default version)")
async def filters_latest(name: str, request: Request, serving: ServingDep) -> FirstLayerResponse:
    return await answer(request, serving, name, None, 0, False)


@router.get("/{name}/versions/{version}/first-layer", response_model=FirstLayerResponse,
            summary="The first convolution's filters (one version)")
async def filters_version(name: str, version: str, request: Request,
                          serving: ServingDep) -> FirstLayerResponse:
    return await answer(request, serving, name, version, 0, False)


@router.post("/{name}/first-layer", response_model=FirstLayerResponse, openapi_extra=_BODY,
             summary="The first convolution's filters and its strongest maps of an image")
async def maps_latest(name: str, request: Request, serving: ServingDep,
                      count: CountParam = 8) -> FirstLayerResponse:
    return await answer(request, serving, name, None, count, True)


@router.post("/{name}/versions/{version}/first-layer", response_model=FirstLayerResponse,
             openapi_extra=_BODY, summary="The same, for one version")
async def maps_version(name: str, version: str, request: Request, serving: ServingDep,
                       count: CountParam = 8) -> FirstLayerResponse:
    return await answer(request, serving, name, version, count, True)
