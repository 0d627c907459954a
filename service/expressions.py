"""Facial expressions in a photo: detect the faces, cut them as the expression model wants,
classify them together; the steps every protocol shares (``POST /v1/expressions``, streams).

Decoding, detection and cropping run in the detection pool (:mod:`service.detection`), at most
``max_pending_detections`` at a time; the faces of a photo then queue at once in the batcher,
so they share one ONNX Runtime run (with faces of concurrent requests too). Boxes are in the
photo's pixels after EXIF orientation; faces are answered left to right.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model_format import Capability, ClassifierCard, DetectorCard
from service import imaging
from service.detection import FaceDetector, detect_bounded
from service.engine import Engine
from service.errors import UnsupportedTask
from service.face_detectors import detector_for
from service.faces import DEFAULT_MARGIN, DetectorConfig, Face, face_crop
from service.imaging import InputSpec
from service.model_version import ModelVersion
from service.schemas import Box, FaceResult

DEFAULT_MODEL = "fer-minixception"
DEFAULT_DETECTOR = "face-retinaface"  # chosen by measurement: docs/faces.md


@dataclass(frozen=True)
class Options:
    """What the caller asks of one photo."""

    min_face_size: int = 20  # smallest face side searched for, pixels
    max_faces: int = 100  # at most this many faces (best first)
    detect: bool = True  # False: the whole image is one face crop


@dataclass
class Recognised:
    """One photo's answer: the decoded photo, its faces left to right, and stage timings."""

    photo: Image.Image
    faces: list[FaceResult]
    timing: dict[str, float]  # seconds: decode, detect, crop, classify


@dataclass
class Analysis:
    """What the thread-pool half of a request produced."""

    photo: Image.Image
    faces: list[Face]
    crops: list[np.ndarray]
    decode_s: float
    detect_s: float
    crop_s: float


def model_input(crop: Image.Image, spec: InputSpec) -> np.ndarray:
    """A face crop as the expression model's ``[H, W, C]`` uint8 input."""
    crop = crop.convert("L" if spec.channels == 1 else "RGB")
    if crop.size != (spec.width, spec.height):
        crop = crop.resize((spec.width, spec.height), imaging.RESAMPLE[spec.interpolation])
    array = np.asarray(crop)
    return array[:, :, None] if array.ndim == 2 else array


@dataclass(frozen=True)
class CropSpec:
    """How the expression model wants its faces cut: ``model.json``'s ``face_crop``."""

    margin: float = DEFAULT_MARGIN  # on each side, as a fraction of the box side
    align: bool = True  # turn the face so that the eyes are level

    @classmethod
    def from_card(cls, card: ClassifierCard | DetectorCard) -> CropSpec:
        crop = card.face_crop if isinstance(card, ClassifierCard) else None
        if crop is None:
            return cls()
        return cls(margin=DEFAULT_MARGIN if crop.margin is None else crop.margin,
                   align=crop.align)


def analyse(data: bytes, max_pixels: int, detector: FaceDetector | None, config: DetectorConfig,
            spec: InputSpec, crop: CropSpec, max_faces: int, max_side: int) -> Analysis:
    """Decode, detect (on a copy no longer than ``max_side``) and crop (blocking: runs in the
    detection pool)."""
    start = time.perf_counter()
    photo = imaging.decode(data, max_pixels)
    decoded = time.perf_counter()
    if detector is None:
        width, height = photo.size
        faces = [Face(box=(0.0, 0.0, float(width), float(height)), score=float("nan"),
                      landmarks=np.zeros((5, 2)))]
    else:
        faces = detect_bounded(detector, photo, config, max_side)[:max_faces]
        faces.sort(key=lambda face: (face.box[0], face.box[1]))
    detected = time.perf_counter()
    crops = [photo] if detector is None else [
        face_crop(photo, face, (spec.width, spec.height), margin=crop.margin, align=crop.align)
        for face in faces]
    arrays = [model_input(crop, spec) for crop in crops]
    return Analysis(photo, faces, arrays, decoded - start, detected - decoded,
                    time.perf_counter() - detected)


def detector_of(version: ModelVersion) -> FaceDetector:
    """``version``'s graphs as a face detector (MTCNN, RetinaFace or BlazeFace, as its
    ``model.json`` says). Raises UnsupportedTask (422) if it is none."""
    version.require(Capability.DETECT_FACES)
    try:
        return detector_for(version)
    except ValueError as error:
        raise UnsupportedTask(str(error)) from None


async def recognise(engine: Engine, classifier: ModelVersion, finder: ModelVersion | None,
                    data: bytes, options: Options) -> Recognised:
    """Every face of the photo in ``data`` and its expression (``finder`` None: the whole photo
    is the face). Both versions are held by the caller for the whole request.

    Raises:
        UnsupportedTask: ``classifier`` is no expression model or ``finder`` no detector (422).
        Overloaded: too many detections running or waiting (503).
    """
    classifier.require(Capability.EXPRESSIONS)
    assert classifier.input is not None
    graphs = detector_of(finder) if finder is not None else None
    settings = engine.settings
    result = await engine.detection_slots().run(
        analyse, data, settings.max_image_pixels, graphs,
        DetectorConfig(min_face_size=options.min_face_size), classifier.input,
        CropSpec.from_card(classifier.card), options.max_faces, settings.detection_max_side)
    if (series := engine.metrics_of(classifier)) is not None:
        series.decode.observe(result.decode_s)
        series.preprocess.observe(result.crop_s)
    if finder is not None and (series := engine.metrics_of(finder)) is not None:
        series.inference.observe(result.detect_s)  # the whole cascade
    start = time.perf_counter()
    rows = await engine.infer(classifier, list(result.crops))
    timing = {"decode": result.decode_s, "detect": result.detect_s, "crop": result.crop_s,
              "classify": time.perf_counter() - start}
    faces = [face_result(face, row, classifier.labels, result.photo.size, options.detect)
             for face, row in zip(result.faces, rows, strict=True)]
    return Recognised(result.photo, faces, timing)


def face_result(face: Face, row: np.ndarray, labels: list[str], size: tuple[int, int],
                 detected: bool) -> FaceResult:
    names = labels or [str(i) for i in range(len(row))]
    x, y, w, h = face.clipped(*size)
    best = int(np.argmax(row))
    return FaceResult(box=Box(x=x, y=y, width=w, height=h),
                      detection_score=face.score if detected else None,
                      expression=names[best],
                      probabilities={name: float(p) for name, p in zip(names, row, strict=True)})
