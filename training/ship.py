"""Ship the pretrained ImageNet classifiers as they are: ``imagenet-mobilenetv2`` and
``imagenet-efficientnet-lite0``.

Each is the registry backbone with its ImageNet weights and head (1,000 classes), exported by
:func:`training.export.export_model` with the preprocessing its publishers used. Before writing,
both are checked on real photos (scikit-image, scikit-learn and OpenCV samples); the top-3 on
each photo is recorded in ``model.json`` under ``sanity``, and an export whose answers on the
cat and the espresso photos are wrong is refused. Their metrics are ``reported`` ones (the
publishers' ImageNet top-1): convserve has no ImageNet validation set to measure on.

Usage::

    python -m training.ship [--models-dir models] [--version 1] [--only NAME] [--overwrite]
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import pretrained
from training.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from training.data.presets import EvalPreset
from training.export import ExportError, ExportSpec, export_model, photo_batch
from training.models import get_model
from training.models.backbones import imagenet_labels

logger = logging.getLogger(__name__)

# Photo -> ImageNet classes a correct answer contains (in the top 5).
SANITY: dict[str, tuple[str, ...]] = {
    "chelsea": ("tabby", "tiger cat", "Egyptian cat"),
    "coffee": ("espresso", "cup", "coffee mug"),
    "squirrel": ("fox squirrel",),
    "messi": ("soccer ball",),
    "china": ("palace", "monastery", "bell cote", "pagoda"),
    "flower": ("daisy",),
}
REQUIRED = ("chelsea", "coffee")  # refuse the export if these are wrong


@dataclass(frozen=True)
class ImagenetModel:
    """A pretrained backbone exported as an ImageNet classifier."""

    backbone: str  # registry name
    mean: tuple[float, ...]  # per-channel, on [0, 1] pixels
    std: tuple[float, ...]
    interpolation: str  # resize filter of the publishers' eval pipeline
    note: str  # where the preprocessing comes from


IMAGENET_MODELS: dict[str, ImagenetModel] = {
    "imagenet-mobilenetv2": ImagenetModel(
        "mobilenet_v2", tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), "bilinear",
        "torchvision MobileNet_V2_Weights.IMAGENET1K_V1.transforms(): resize 256 bilinear, "
        "centre crop 224, ImageNet mean/std"),
    "imagenet-efficientnet-lite0": ImagenetModel(
        "efficientnet_lite0", (127 / 255,) * 3, (128 / 255,) * 3, "bicubic",
        "TensorFlow efficientnet_lite_builder: (x - 127) / 128 on 0..255 pixels; eval crop "
        "224/(224+32) of the shorter side, bicubic. On the sample photos this gave higher "
        "confidence in the right classes than ImageNet mean/std (espresso 0.95 vs 0.78)"),
}


def eval_preset(interpolation: str) -> EvalPreset:
    """ImageNet evaluation: shorter side to 256, centre crop 224x224, RGB."""
    return EvalPreset(height=224, width=224, channels=3, resize_method="shorter-side-center-crop",
                      shorter_side=256, interpolation=interpolation)


def sanity(model: torch.nn.Module, prep: Preprocessing, images: np.ndarray,
           labels: list[str]) -> dict[str, Any]:
    """Top-3 on each :data:`SANITY` photo and whether an expected class is in the top 5."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        probs = torch.softmax(model(prep.module()(x)), dim=1)
    results = {}
    for photo, row in zip(SANITY, probs, strict=True):
        top = row.topk(5)
        names = [labels[i] for i in top.indices.tolist()]
        results[photo] = {
            "top3": [[n, round(p, 4)] for n, p in zip(names[:3], top.values.tolist()[:3],
                                                       strict=True)],
            "expected": list(SANITY[photo]),
            "in_top5": any(n in SANITY[photo] for n in names)}
    return results


def ship_imagenet(name: str, models_dir: str | Path = "models", version: int = 1,
                  overwrite: bool = False) -> Path:
    """Export ``name`` (a key of :data:`IMAGENET_MODELS`) into ``models_dir``.

    Raises:
        ExportError: the photo sanity check or an export check failed.
    """
    spec_in = IMAGENET_MODELS[name]
    model = get_model(spec_in.backbone, pretrained=True).eval()
    prep = Preprocessing(mean=list(spec_in.mean), std=list(spec_in.std))
    preset = eval_preset(spec_in.interpolation)
    images = photo_batch(list(SANITY), preset)
    labels = imagenet_labels()
    checks = sanity(model, prep, images, labels)
    for photo, result in checks.items():
        logger.info("%s %s: %s", name, photo, result["top3"])
    wrong = [photo for photo in REQUIRED if not checks[photo]["in_top5"]]
    if wrong:
        raise ExportError(f"{name} misclassifies {wrong}: {checks}; check the preprocessing")
    spec = ExportSpec(
        name=name, version=version, labels=labels, height=224, width=224, channels=3,
        resize=preset.to_json(), preprocessing={**prep.to_json(), "source": spec_in.note},
        metrics={"reported": pretrained.reported_metrics(spec_in.backbone)},
        source_weights=pretrained.provenance(spec_in.backbone),
        config={"model": {"name": spec_in.backbone, "pretrained": True, "num_classes": 1000}},
        extra={"sanity": {"photos": checks,
                          "passed": sum(r["in_top5"] for r in checks.values())}})
    return export_model(model, spec, images, preprocess=prep.module(), models_dir=models_dir,
                        overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    """Command line: ship every ImageNet model (or ``--only`` one)."""
    parser = argparse.ArgumentParser(prog="python -m training.ship",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", default="models", help="repository root (default models)")
    parser.add_argument("--version", type=int, default=1, help="version to write (default 1)")
    parser.add_argument("--only", choices=sorted(IMAGENET_MODELS), help="ship just this one")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in [args.only] if args.only else list(IMAGENET_MODELS):
        try:
            print(ship_imagenet(name, args.models_dir, args.version, args.overwrite))  # noqa: T201
        except ExportError as error:
            print(f"error: {error}", file=sys.stderr)  # noqa: T201
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
