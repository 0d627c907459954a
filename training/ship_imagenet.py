"""Ship the pretrained ImageNet classifiers as they are: ``imagenet-mobilenetv2`` and
``imagenet-efficientnet-lite0`` (one step of ``python -m training ship``, :mod:`training.ship`).

Each is the registry backbone with its ImageNet weights and head (1,000 classes), exported by
:func:`training.export.export_model` with the preprocessing its publishers used: the backbone's
:class:`~training.models.backbones.PretrainedCfg`, kept beside its builder. Before writing,
both are checked on real photos (scikit-image, scikit-learn and OpenCV samples); the top-3 on
each photo is recorded in ``model.json`` under ``sanity``, and an export whose answers on the
cat and the espresso photos are wrong is refused. Their metrics are ``reported`` ones (the
publishers' ImageNet top-1): convserve has no ImageNet validation set to measure on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import pretrained
from training.data.preprocessing import Preprocessing
from training.data.presets import EvalPreset
from training.errors import ExportError
from training.export import ExportSpec, export_model, photo_batch
from training.models import get_model
from training.models.backbones import PretrainedCfg, imagenet_labels, pretrained_cfg

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


# Repository name -> registry backbone whose pretrained weights (and head) ship as they are.
IMAGENET_MODELS: dict[str, str] = {
    "imagenet-mobilenetv2": "mobilenet_v2",
    "imagenet-efficientnet-lite0": "efficientnet_lite0",
}


def eval_preset(cfg: PretrainedCfg) -> EvalPreset:
    """The publishers' evaluation: shorter side to ``resize_side``, centre crop, RGB."""
    return EvalPreset(height=cfg.input_size, width=cfg.input_size, channels=3,
                      resize_method="shorter-side-center-crop", shorter_side=cfg.resize_side,
                      interpolation=cfg.interpolation)


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
    backbone = IMAGENET_MODELS[name]
    cfg = pretrained_cfg(backbone)
    model = get_model(backbone, pretrained=True).eval()
    prep = Preprocessing(mean=list(cfg.mean), std=list(cfg.std))
    preset = eval_preset(cfg)
    images = photo_batch(list(SANITY), preset)
    labels = imagenet_labels()
    checks = sanity(model, prep, images, labels)
    for photo, result in checks.items():
        logger.info("%s %s: %s", name, photo, result["top3"])
    wrong = [photo for photo in REQUIRED if not checks[photo]["in_top5"]]
    if wrong:
        raise ExportError(f"{name} misclassifies {wrong}: {checks}; check the preprocessing")
    spec = ExportSpec(
        name=name, version=version, labels=labels, height=preset.height, width=preset.width,
        channels=3, resize=preset.to_json(), preprocessing={**prep.to_json(), "source": cfg.source},
        metrics={"reported": pretrained.reported_metrics(backbone)},
        source_weights=pretrained.provenance(backbone),
        config={"model": {"name": backbone, "pretrained": True, "num_classes": 1000}},
        extra={"sanity": {"photos": checks,
                          "passed": sum(r["in_top5"] for r in checks.values())}})
    return export_model(model, spec, images, preprocess=prep.module(), models_dir=models_dir,
                        overwrite=overwrite)
