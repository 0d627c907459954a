"""``/v1/models/{name}/first-layer``: the first convolution's filters, and its maps of a photo.

``GET``: every filter of the first convolution as a small image (read from the ONNX weights).
``POST`` with one image (uploads as classify): the same, plus the ``count`` feature maps with the
highest mean activation for that image, as grey PNG data URLs. :mod:`service.layers` does the work,
in the decode pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from model_format import Capability
from service import imaging, layers
from service.engine import Engine
from service.errors import InvalidParameter
from service.http.deps import EngineDep
from service.http.openapi import V1_ERRORS, errors, image_body, versioned
from service.http.uploads import read_uploads
from service.model_version import ModelVersion
from service.schemas import FeatureMap, FirstLayerResponse

router = APIRouter(prefix="/v1/models", tags=["explain"], responses=errors(*V1_ERRORS))

CountParam = Annotated[int, Query(ge=1, le=layers.MAX_MAPS,
                                  description="feature maps to return (the strongest)")]


def _describe(version: ModelVersion, engine: Engine, data: bytes | None,
              count: int) -> FirstLayerResponse:
    """Blocking: read the graph (first time), and run the photo through its first layer."""
    settings = engine.settings
    layer = layers.first_layer(version, settings)  # the graph loaded, not the file
    body = FirstLayerResponse(
        model=version.name, version=version.version, layer=layer.node,
        activation=layer.activation, shape=list(layer.weight.shape), stride=list(layer.stride),
        filters=layers.filter_images(layer.weight))
    if data is not None:
        assert version.input is not None
        array = imaging.prepare(data, version.input, settings.max_image_pixels).array
        maps = layer.feature_maps(array)
        body.feature_maps = [
            FeatureMap(index=i, mean=float(maps[i].mean()), image=layers.map_png(maps[i]))
            for i in layers.strongest(maps, count)]
        body.map_size = list(maps.shape[1:])
    return body


async def answer(request: Request, engine: Engine, name: str, version: str | None,
                 count: int, with_image: bool) -> FirstLayerResponse:
    chosen = engine.get(name, version, Capability.FIRST_LAYER)
    request.state.model, request.state.version = chosen.name, chosen.version
    data = None
    if with_image:
        uploads = await read_uploads(request, engine.settings.max_images_per_request)
        if len(uploads) != 1:
            raise InvalidParameter(f"first-layer takes one image per request, not {len(uploads)}")
        data = uploads[0].data
    return await engine.in_pool(_describe, chosen, engine, data, count)


@versioned(router, "GET", "/first-layer", "The first convolution's filters",
           response_model=FirstLayerResponse)
async def first_layer_filters(name: str, request: Request, engine: EngineDep,
                              version: str | None = None) -> FirstLayerResponse:
    return await answer(request, engine, name, version, 0, False)


@versioned(router, "POST", "/first-layer",
           "The first convolution's filters and its strongest maps of an image",
           response_model=FirstLayerResponse, openapi_extra=image_body())
async def first_layer_maps(name: str, request: Request, engine: EngineDep,
                           count: CountParam = 8,
                           version: str | None = None) -> FirstLayerResponse:
    return await answer(request, engine, name, version, count, True)
