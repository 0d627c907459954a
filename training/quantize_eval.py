"""int8 against float, measured through ONNX Runtime (CPU) on the service's inputs.

A model trained here is measured on its whole test split: top-1 of both graphs, the drop, how
often they agree and the largest probability difference. A model with no test split here (the
ImageNet classifiers: no labelled ImageNet set ships in a registry package) gets top-1
*agreement* with its float model and the largest probability difference over every natural photo
(:data:`training.quantize_data.NATURAL_PHOTOS`), overall, on the photos its calibration did not
see, and on the photos the float model is confident about (top-1 probability >= 0.5: on the
others the top-1 is a near tie that flips under any small change, which the float model against
itself on the same photos re-encoded as JPEG shows). That is agreement, not ImageNet accuracy,
and the record says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_format import ClassifierCard, FloatComparison, PhotoAgreement
from training.quantize_data import HELD_OUT_PHOTOS, photo_set, test_set

RUN_BATCH = 256
CONFIDENT = 0.5  # a float top-1 probability from which the top-1 answer means something
JPEG_QUALITY = 90  # the reference: the float model on the photos re-encoded as JPEG


@dataclass
class Comparison:
    """What :func:`compare` measured; ``sample``: a few inputs for later checks (CAM)."""

    accuracy: FloatComparison | None
    agreement: PhotoAgreement | None
    measured: dict[str, Any] | None  # the int8 model's metrics.measured
    sample: np.ndarray


def probabilities(path: Path, images: np.ndarray, card: ClassifierCard) -> np.ndarray:
    """``card.output`` of the graph at ``path`` for ``images``, :data:`RUN_BATCH` at a time."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([
        session.run([card.output.name], {card.input.name: images[i:i + RUN_BATCH]})[0]
        for i in range(0, len(images), RUN_BATCH)])


def _top5(probs: np.ndarray, labels: np.ndarray) -> float:
    top = np.argsort(-probs, axis=1)[:, :5]
    return float((top == labels[:, None]).any(axis=1).mean())


def compare(float_path: Path, int8_path: Path, card: ClassifierCard,
            test_limit: int | None = None) -> Comparison:
    """Measure ``int8_path`` against ``float_path`` (see the module)."""
    tests = test_set(card, test_limit)
    if tests is not None and tests.labels is not None:
        before = probabilities(float_path, tests.images, card)
        after = probabilities(int8_path, tests.images, card)
        float_top1 = float((before.argmax(1) == tests.labels).mean())
        int8_top1 = float((after.argmax(1) == tests.labels).mean())
        accuracy = FloatComparison(
            dataset=tests.about["dataset"], split=tests.about["split"], images=len(tests.images),
            float_top1=float_top1, int8_top1=int8_top1,
            top1_drop=round(float_top1 - int8_top1, 6),
            top1_agreement=float((before.argmax(1) == after.argmax(1)).mean()),
            max_probability_difference=float(np.abs(before - after).max()))
        measured = {"dataset": tests.about["dataset"], "split": tests.about["split"],
                    "images": len(tests.images), "top1": int8_top1,
                    "top5": _top5(after, tests.labels)}
        return Comparison(accuracy, None, measured, tests.images[:8])
    photos = photo_set(card)
    before = probabilities(float_path, photos.images, card)
    after = probabilities(int8_path, photos.images, card)
    jpeg = probabilities(float_path, photo_set(card, jpeg_quality=JPEG_QUALITY).images, card)
    same = before.argmax(1) == after.argmax(1)
    held = np.array([name in HELD_OUT_PHOTOS for name in photos.names])
    confident = before.max(1) >= CONFIDENT
    labels = card.labels
    agreement = PhotoAgreement(
        photos=len(photos.names), top1_agreement=float(same.mean()),
        max_probability_difference=float(np.abs(before - after).max()),
        confident_photos=int(confident.sum()),
        confident_top1_agreement=float(same[confident].mean()) if confident.any() else None,
        jpeg_reference_top1_agreement=float((before.argmax(1) == jpeg.argmax(1)).mean()),
        held_out_photos=int(held.sum()),
        held_out_top1_agreement=float(same[held].mean()) if held.any() else None,
        disagreements=[f"{name}: {labels[b]} -> {labels[a]}" for name, b, a, ok in zip(
            photos.names, before.argmax(1), after.argmax(1), same, strict=True) if not ok])
    return Comparison(None, agreement, None, photos.images[:8])
