"""``POST /v1/models/{name}/explain``: where the model looked for a class, as a grid or a PNG.

Same uploads as classify (one image), plus ``class`` (label or index; default the top-1) and
``format`` (``json``: a grid of [0, 1] floats over the photo; ``png``: the photo with the map
blended over it). The image goes through classify's decoding and resizing
(:func:`service.imaging.prepare`), so the probabilities are classify's; the work runs in the
decode pool, off the event loop. Methods and costs: :mod:`service.explain`, docs/explain.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response

from model_format import Capability
from service import explain
from service.errors import InvalidParameter
from service.explain_run import Explained, explain_upload
from service.http.deps import EngineDep
from service.http.openapi import V1_ERRORS, errors, image_body, versioned
from service.http.uploads import read_uploads
from service.model_version import ModelVersion
from service.pipeline import top_k
from service.schemas import (
    Cost,
    ExplainResponse,
    ImageSize,
    Point,
    Prediction,
    Region,
)

PREFIX = "/v1/models"
router = APIRouter(prefix=PREFIX, tags=["explain"], responses=errors(*V1_ERRORS))

ClassParam = Annotated[str | None, Query(
    alias="class", description="the class to explain: a label or an index (default: the top-1)")]
MethodParam = Annotated[Literal["cam", "occlusion"] | None, Query(
    description="cam or occlusion (default: the model's, GET /v1/models says which)")]
FormatParam = Annotated[Literal["json", "png"], Query(
    description="json: the map as a grid over the photo; png: the photo with the map over it")]


@versioned(router, "POST", "/explain", "Where the model looked for a class",
           response_model=ExplainResponse, openapi_extra=image_body(answers=("image/png",)))
async def explain_image(name: str, request: Request, engine: EngineDep,
                        wanted: ClassParam = None, method: MethodParam = None,
                        format: FormatParam = "json", version: str | None = None) -> Response:
    """Explain the request's one image with ``name`` (its default version, or ``version``)."""
    chosen = engine.get(name, version, Capability.EXPLAIN)
    request.state.model, request.state.version = chosen.name, chosen.version
    explain.require_method(chosen, method)
    uploads = await read_uploads(request, engine.settings.max_images_per_request)
    if len(uploads) != 1:
        raise InvalidParameter(f"explain takes one image per request, not {len(uploads)}; "
                               "send the others in requests of their own")
    request.state.images = 1
    done = await explain_upload(engine, chosen, uploads[0].data, wanted, method, format == "png")
    if done.png is not None:
        return Response(done.png, media_type="image/png")
    return Response(_body(chosen, done).model_dump_json(), media_type="application/json")


def _body(chosen: ModelVersion, done: Explained) -> ExplainResponse:
    result, box = done.result, done.box
    labels = chosen.labels
    score = float(result.probabilities[result.index])
    x, y = explain.peak(result.map, box)
    columns, rows = explain.grid_size(done.photo_size)
    grid = explain.sample(result.map, box, (columns, rows), done.photo_size)
    return ExplainResponse(
        model=chosen.name, version=chosen.version, method=result.method,  # type: ignore[arg-type]
        explained=Prediction(label=labels[result.index], index=result.index, score=score),
        predictions=top_k(result.probabilities, labels, 5),
        cost=Cost(runs=result.runs, images=result.images),
        image=ImageSize(width=done.photo_size[0], height=done.photo_size[1]),
        region=Region(x=box[0], y=box[1], width=box[2] - box[0], height=box[3] - box[1]),
        peak=Point(x=x, y=y), grid=np.round(grid.astype(np.float64), 4).tolist())
