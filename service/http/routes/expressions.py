"""``POST /v1/expressions``: every face in a photo, where it is and which expression it shows.

The work is :func:`service.expressions.recognise`'s; this route reads the one upload and the
parameters, and answers JSON, or with ``annotate=true`` (or ``Accept: image/png`` /
``image/jpeg``) the photo with the boxes drawn. A photo without faces is a normal answer with an
empty list. ``version`` and ``detector_version`` choose versions; both answer as ``/v1``'s other
answers do, a name and an integer version.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from PIL import Image

from model_format import Capability
from service.annotate import FORMATS, Label, annotate, encode
from service.expressions import DEFAULT_DETECTOR, DEFAULT_MODEL, Options, recognise
from service.http.deps import EngineDep
from service.http.openapi import V1_ERRORS, errors, image_body
from service.http.uploads import read_uploads
from service.schemas import ExpressionsResponse, ImageSize

router = APIRouter(prefix="/v1", tags=["expressions"], responses=errors(*V1_ERRORS))

MinFace = Annotated[int, Query(ge=10, le=10000, description="smallest face side searched for, px")]
MaxFaces = Annotated[int, Query(ge=1, le=1000, description="at most this many faces (best first)")]
Detect = Annotated[bool, Query(description="false: the whole image is one face crop")]
AnnotateFlag = Annotated[bool, Query(alias="annotate",
                                     description="answer the photo with labelled boxes")]
Version = Annotated[int | None, Query(ge=1, description="version of the expression model "
                                      "(default: its default version, GET /v1/models)")]
DetectorVersion = Annotated[int | None, Query(ge=1, description="version of the face detector "
                                              "(default: its default version)")]


def _wanted_image(request: Request, annotate_flag: bool) -> str | None:
    """The image media type to answer with, or None for JSON."""
    accepted = []  # (media type, quality), best first; q=0 means "not this one" (RFC 9110)
    for part in request.headers.get("accept", "").split(","):
        media_type, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            accepted.append((media_type.lower(), quality))
    accepted.sort(key=lambda pair: -pair[1])
    for media_type, _ in accepted:
        if media_type in FORMATS:
            return media_type
        if media_type == "application/json":
            break
    return "image/png" if annotate_flag else None


@router.post("/expressions", response_model=ExpressionsResponse,
             openapi_extra=image_body(answers=tuple(FORMATS)),
             summary="Detect faces and classify their expressions")
async def expressions(request: Request, engine: EngineDep,
                      min_face_size: MinFace = 20, max_faces: MaxFaces = 100,
                      detect: Detect = True, annotate_flag: AnnotateFlag = False,
                      model: str = DEFAULT_MODEL, detector: str = DEFAULT_DETECTOR,
                      version: Version = None,
                      detector_version: DetectorVersion = None) -> Any:
    classifier = engine.get(model, version, Capability.EXPRESSIONS)  # both held throughout
    finder = engine.get(detector, detector_version, Capability.DETECT_FACES) if detect else None
    request.state.model, request.state.version = classifier.name, classifier.version
    upload = (await read_uploads(request, 1))[0]
    request.state.images = 1
    found = await recognise(engine, classifier, finder, upload.data,
                            Options(min_face_size, max_faces, detect))
    faces = found.faces
    headers = {"Server-Timing": ", ".join(f"{k};dur={v * 1000:.2f}"
                                          for k, v in found.timing.items()),
               "X-Faces": str(len(faces))}
    media_type = _wanted_image(request, annotate_flag)
    if media_type is not None:
        drawn = [Label((f.box.x, f.box.y, f.box.width, f.box.height), f.expression,
                       f.probabilities[f.expression]) for f in faces]
        # Drawn and encoded in the detection pool: a big photo takes a while, off the event
        # loop and away from the decode pool's threads.
        pool = engine.detection_slots().pool
        body = await asyncio.get_running_loop().run_in_executor(pool, _drawn, found.photo, drawn,
                                                                media_type)
        return Response(body, media_type=media_type, headers=headers)
    answer = ExpressionsResponse(
        model=classifier.name, version=classifier.version,
        detector=finder.name if finder is not None else None,
        detector_version=finder.version if finder is not None else None,
        image=ImageSize(width=found.photo.width, height=found.photo.height), faces=faces)
    return Response(answer.model_dump_json(), media_type="application/json", headers=headers)


def _drawn(photo: Image.Image, labels: list[Label], media_type: str) -> bytes:
    return encode(annotate(photo, labels), media_type)
