"""One photo's faces, found and cut for the expression model (blocking; runs in the detection
pool): decode with the pixel limit, detect on a bounded working copy
(:func:`service.detection.detect_bounded`), cut each face with a margin and its eyes levelled
(:func:`service.faces.face_crop`), and convert it to the model's input. ``POST /v1/expressions``
and the expression stream (:mod:`service.streams`) share it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model_format import ClassifierCard, DetectorCard
from service import imaging
from service.detection import FaceDetector, detect_bounded
from service.faces import DEFAULT_MARGIN, DetectorConfig, Face, face_crop
from service.imaging import InputSpec


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
