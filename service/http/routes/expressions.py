"""``POST /v1/expressions``: every face in a photo, where it is and which expression it shows.

Steps: decode the photo at full size (EXIF orientation applied, so boxes are in the photo as it
is displayed), detect faces with the MTCNN graphs (``service/faces.py``) on a bounded copy in
the detection pool (``service/detection.py``: boxes come back in the photo's pixels), crop each
face with a margin and level its eyes, convert it to the expression model's input, and classify
all faces of the request together through the batcher (they queue at once, so they share one
ONNX Runtime run, with faces of concurrent requests too; more faces than the queue holds go in
several runs). Faces are answered left to right. A photo without
faces is a normal answer with an empty list. ``annotate=true`` (or ``Accept: image/png`` /
``image/jpeg``) answers the photo with the boxes drawn instead of JSON.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from PIL import Image
from pydantic import BaseModel, Field

from service.annotate import FORMATS, Label, annotate, encode
from service.detection import DetectionSlots, FaceDetector
from service.errors import InvalidParameter, NotReady
from service.face_analysis import CropSpec, analyse
from service.face_detectors import detector_for
from service.faces import DetectorConfig, Face
from service.http.deps import BatcherDep, MetricsDep, RepositoryDep, SettingsDep
from service.http.uploads import read_uploads
from service.model_version import ModelVersion
from service.schemas import ErrorResponse

DEFAULT_MODEL = "fer-minixception"
DEFAULT_DETECTOR = "face-retinaface"
EXPRESSION_TASK = "expression"

router = APIRouter(prefix="/v1", tags=["expressions"], responses={
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503)})


class Box(BaseModel):
    x: int = Field(description="left edge, pixels from the left of the (EXIF-oriented) photo")
    y: int = Field(description="top edge, pixels from the top")
    width: int
    height: int


class FaceResult(BaseModel):
    box: Box
    detection_score: float | None = Field(description="face probability (null with detect=false)")
    expression: str = Field(description="the most probable expression")
    probabilities: dict[str, float] = Field(description="every expression's probability")


class ImageSize(BaseModel):
    width: int
    height: int


class ExpressionsResponse(BaseModel):
    model: str = Field(description="name/version of the expression model")
    detector: str | None = Field(description="name/version of the face detector (or null)")
    image: ImageSize = Field(description="the photo's size after EXIF orientation")
    faces: list[FaceResult] = Field(description="left to right")


_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}, "responses": {"200": {"content": {"image/png": {}, "image/jpeg": {}}}}}


def _classifier(version: ModelVersion) -> ModelVersion:
    """``version`` if it classifies face crops into expressions; a 422 naming the fix if not."""
    if version.task != EXPRESSION_TASK or version.input is None:
        raise InvalidParameter(f"model={version.name} is a {version.task} model, not an "
                               f"expression model: use model={DEFAULT_MODEL} or another model "
                               "whose task is 'expression' (GET /v1/models)")
    return version


def _detector(version: ModelVersion) -> FaceDetector:
    try:
        return detector_for(version)
    except ValueError as error:
        raise InvalidParameter(f"detector={error}: use detector={DEFAULT_DETECTOR} or "
                               "detector=face-mtcnn") from None


def _wanted_image(request: Request, annotate_flag: bool) -> str | None:
    """The image media type to answer with, or None for JSON."""
    accepted = [part.split(";")[0].strip().lower()
                for part in request.headers.get("accept", "").split(",")]
    for media_type in accepted:
        if media_type in FORMATS:
            return media_type
        if media_type == "application/json":
            break
    return "image/png" if annotate_flag else None


MinFace = Annotated[int, Query(ge=10, le=10000, description="smallest face side searched for, px")]
MaxFaces = Annotated[int, Query(ge=1, le=1000, description="at most this many faces (best first)")]
Detect = Annotated[bool, Query(description="false: the whole image is one face crop")]
AnnotateFlag = Annotated[bool, Query(alias="annotate",
                                     description="answer the photo with labelled boxes")]
Version = Annotated[int | None, Query(ge=1, description="version of the expression model "
                                      "(default: its default version, GET /v1/models)")]


@router.post("/expressions", response_model=ExpressionsResponse, openapi_extra=_BODY,
             summary="Detect faces and classify their expressions")
async def expressions(request: Request, repository: RepositoryDep, settings: SettingsDep,
                      batcher: BatcherDep, metrics: MetricsDep,
                      min_face_size: MinFace = 20, max_faces: MaxFaces = 100,
                      detect: Detect = True, annotate_flag: AnnotateFlag = False,
                      model: str = DEFAULT_MODEL, detector: str = DEFAULT_DETECTOR,
                      version: Version = None) -> Any:
    classifier = _classifier(repository.get(model, version))  # both held for the request
    assert classifier.input is not None
    finder = repository.get(detector) if detect else None
    graphs = _detector(finder) if finder is not None else None
    request.state.model, request.state.version = classifier.name, classifier.version
    upload = (await read_uploads(request, 1))[0]
    request.state.images = 1
    loop = asyncio.get_running_loop()
    slots: DetectionSlots | None = request.app.state.detection
    if slots is None:
        raise NotReady("the service is starting or stopping; retry in a moment")
    result = await slots.run(
        analyse, upload.data, settings.max_image_pixels, graphs,
        DetectorConfig(min_face_size=min_face_size), classifier.input,
        CropSpec.from_card(classifier.card), max_faces, settings.detection_max_side)
    labels = (classifier.name, str(classifier.version))
    metrics.decode.labels(*labels).observe(result.decode_s)
    metrics.preprocess.labels(*labels).observe(result.crop_s)
    if finder is not None:  # the whole cascade, as the detector's inference time
        metrics.inference.labels(finder.name, str(finder.version)).observe(result.detect_s)
    start = time.perf_counter()
    rows = await batcher.submit_many(classifier, list(result.crops))
    classify_s = time.perf_counter() - start
    faces = [_face_result(face, row, classifier.labels, result.photo.size, detect)
             for face, row in zip(result.faces, rows, strict=True)]
    timing = {"decode": result.decode_s, "detect": result.detect_s, "crop": result.crop_s,
              "classify": classify_s}
    headers = {"Server-Timing": ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in timing.items()),
               "X-Faces": str(len(faces))}
    media_type = _wanted_image(request, annotate_flag)
    if media_type is not None:
        drawn = [Label((f.box.x, f.box.y, f.box.width, f.box.height), f.expression,
                       f.probabilities[f.expression]) for f in faces]
        # Drawn and encoded in the detection pool: a big photo takes a while, off the event
        # loop and away from the decode pool's threads.
        body = await loop.run_in_executor(slots.pool, _drawn, result.photo, drawn, media_type)
        return Response(body, media_type=media_type, headers=headers)
    answer = ExpressionsResponse(
        model=classifier.key, detector=finder.key if finder is not None else None,
        image=ImageSize(width=result.photo.width, height=result.photo.height), faces=faces)
    return Response(answer.model_dump_json(), media_type="application/json", headers=headers)


def _drawn(photo: Image.Image, labels: list[Label], media_type: str) -> bytes:
    return encode(annotate(photo, labels), media_type)


def _face_result(face: Face, row: np.ndarray, labels: list[str], size: tuple[int, int],
                 detected: bool) -> FaceResult:
    names = labels or [str(i) for i in range(len(row))]
    x, y, w, h = face.clipped(*size)
    best = int(np.argmax(row))
    return FaceResult(box=Box(x=x, y=y, width=w, height=h),
                      detection_score=face.score if detected else None,
                      expression=names[best],
                      probabilities={name: float(p) for name, p in zip(names, row, strict=True)})
