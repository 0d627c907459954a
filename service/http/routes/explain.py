"""``POST /v1/models/{name}/explain``: where the model looked for a class, as a grid or a PNG.

Same uploads as classify (one image), plus ``class`` (label or index; default the top-1) and
``format`` (``json``: a grid of [0, 1] floats over the photo; ``png``: the photo with the map
blended over it). The image goes through classify's decoding and resizing
(:func:`service.imaging.prepare`), so the probabilities are classify's; decoding and drawing
run in the decode pool, inference in the batcher with every other request's images
(:mod:`service.explain_run`). Methods and costs: :mod:`service.explain`, docs/explain.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from service import explain
from service.errors import InvalidParameter
from service.explain_run import explain_upload
from service.http.deps import Serving, ServingDep
from service.http.uploads import read_uploads
from service.pipeline import top_k
from service.schemas import ErrorResponse, Prediction

PREFIX = "/v1/models"
router = APIRouter(prefix=PREFIX, tags=["explain"], responses={
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503)})

ClassParam = Annotated[str | None, Query(
    alias="class", description="the class to explain: a label or an index (default: the top-1)")]
MethodParam = Annotated[Literal["cam", "occlusion"] | None, Query(
    description="cam or occlusion (default: the model's, GET /v1/models says which)")]
FormatParam = Annotated[Literal["json", "png"], Query(
    description="json: the map as a grid over the photo; png: the photo with the map over it")]

_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}, "responses": {"200": {"content": {"image/png": {}}}}}


class Cost(BaseModel):
    runs: int = Field(description="ONNX Runtime runs this answer took")
    images: int = Field(description="images those runs computed (occlusion: 1 + 64 patches)")


class Size(BaseModel):
    width: int
    height: int


class Region(BaseModel):
    x: float = Field(description="left edge of the part of the photo the model saw, pixels")
    y: float
    width: float
    height: float


class Point(BaseModel):
    x: float
    y: float


class ExplainResponse(BaseModel):
    model: str
    version: int
    method: Literal["cam", "occlusion"] = Field(
        description="cam: class activation map from the graph; occlusion: grey patch sliding")
    explained: Prediction = Field(description="the class the map is for")
    predictions: list[Prediction] = Field(description="the image's top 5, as classify answers")
    cost: Cost
    image: Size = Field(description="the photo as displayed (EXIF orientation applied)")
    region: Region = Field(description="the part of the photo the model saw (its centre crop)")
    peak: Point = Field(description="the map's hottest place, in photo pixels")
    grid: list[list[float]] = Field(
        description="rows of [0, 1] values, top to bottom, each cell an equal part of the photo "
                    "(32 cells along its longer side); 0 outside region")


async def answer(request: Request, serving: Serving, name: str, version: str | None,
                 wanted: str | None, method: str | None, fmt: str) -> Response:
    """Explain the request's one image with ``name`` (its default version, or ``version``)."""
    chosen = serving.repository.get(name, version)
    request.state.model, request.state.version = chosen.name, chosen.version
    explain.require_method(chosen, method)
    uploads = await read_uploads(request, serving.settings.max_images_per_request)
    if len(uploads) != 1:
        raise InvalidParameter(f"explain takes one image per request, not {len(uploads)}; "
                               "send the others in requests of their own")
    request.state.images = 1
    done = await explain_upload(chosen, uploads[0].data, wanted, method, fmt == "png",
                                serving.settings.max_image_pixels, serving.pool, serving.batcher)
    if done.png is not None:
        return Response(done.png, media_type="image/png")
    result, box = done.result, done.box
    labels = chosen.labels
    score = float(result.probabilities[result.index])
    x, y = explain.peak(result.map, box)
    columns, rows = explain.grid_size(done.photo_size)
    grid = explain.sample(result.map, box, (columns, rows), done.photo_size)
    body = ExplainResponse(
        model=chosen.name, version=chosen.version, method=result.method,  # type: ignore[arg-type]
        explained=Prediction(label=labels[result.index], index=result.index, score=score),
        predictions=top_k(result.probabilities, labels, 5),
        cost=Cost(runs=result.runs, images=result.images),
        image=Size(width=done.photo_size[0], height=done.photo_size[1]),
        region=Region(x=box[0], y=box[1], width=box[2] - box[0], height=box[3] - box[1]),
        peak=Point(x=x, y=y), grid=np.round(grid.astype(np.float64), 4).tolist())
    return Response(body.model_dump_json(), media_type="application/json")


@router.post("/{name}/explain", response_model=ExplainResponse, openapi_extra=_BODY,
             summary="Where the default version looked for a class")
async def explain_latest(name: str, request: Request, serving: ServingDep,
                         wanted: ClassParam = None, method: MethodParam = None,
                         format: FormatParam = "json") -> Response:
    return await answer(request, serving, name, None, wanted, method, format)


@router.post("/{name}/versions/{version}/explain", response_model=ExplainResponse,
             openapi_extra=_BODY, summary="Where one version looked for a class")
async def explain_version(name: str, version: str, request: Request, serving: ServingDep,
                          wanted: ClassParam = None, method: MethodParam = None,
                          format: FormatParam = "json") -> Response:
    return await answer(request, serving, name, version, wanted, method, format)
