"""Export a training run's checkpoint: ``python -m training export RUN`` (and the trained
models' step of ``python -m training ship``).

The checkpoint's model, eval preset, fitted preprocessing, labels and test metrics go through
the checked exporter (:func:`training.export.export_model`); the parity check runs on real
photos and the run's first test images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from training.export import (
    PARITY_PHOTOS,
    ExportError,
    ExportSpec,
    export_model,
    photo_batch,
    to_uint8_hwc,
)

logger = logging.getLogger(__name__)


def _test_samples(config: Any, count: int) -> np.ndarray | None:
    """The first ``count`` test-split images through the eval preset (None if unreadable)."""
    from training.data.pipeline import build_split

    try:
        dataset = build_split(config, config.data.test_split, train=False)
    except (OSError, ValueError, KeyError) as error:
        logger.warning("no test samples for the parity check (%s); using photos only", error)
        return None
    return np.stack([to_uint8_hwc(dataset[i][0]) for i in range(min(count, len(dataset)))])


def export_checkpoint(checkpoint: str | Path, *, name: str | None = None,
                      version: int | None = None, models_dir: str | Path = "models",
                      overwrite: bool = False, samples: int = 8) -> Path:
    """Export a training run's checkpoint (``python -m training export``).

    The parity check runs on real photos (:data:`PARITY_PHOTOS`) and the first ``samples``
    test images, all through the run's eval preset. ``model.json`` gets the run's labels, eval
    resize, fitted preprocessing, test metrics (``measured``), resolved config and, when
    fine-tuned, the pretrained weights' provenance.

    Args:
        checkpoint: ``checkpoint.pt`` or the run directory.
        name: Model name (default: the config's ``export.name``).
        version: Version (default: the config's ``export.version``).
        models_dir: The model repository.
        overwrite: Replace an existing version.
        samples: Test images added to the parity check.

    Raises:
        ExportError: a check failed or the name is missing; nothing is written.
    """
    from training import pretrained
    from training.checkpoints import load_trained
    from training.data.pipeline import DATASET_NAMES

    trained = load_trained(checkpoint)  # the checkpoint is read once
    config = trained.config
    name = name or config.export.name
    if not name:
        raise ExportError("no model name: pass --name or set export.name in the config")
    preset = trained.eval_preset
    images = photo_batch(PARITY_PHOTOS, preset)  # grey presets give [N, H, W, 1]
    tests = _test_samples(config, samples)
    if tests is not None:
        images = np.concatenate([images, tests])
    metrics: dict[str, Any] = {}
    if trained.metrics:
        measured = trained.metrics
        metrics["measured"] = {
            "dataset": DATASET_NAMES.get(config.data.name, config.data.name),
            "split": config.data.test_split, "images": measured["images"],
            "top1": measured["top1"], "top5": measured.get("top5")}
    sources = (pretrained.provenance(config.model.name)
               if trained.trained_config["finetune"]["pretrained"] else [])
    spec = ExportSpec(
        name=name, version=version or config.export.version, labels=trained.labels,
        height=preset.height, width=preset.width, channels=preset.channels,
        resize=preset.to_json(), preprocessing=trained.preprocessing.to_json(),
        task=config.export.task, metrics=metrics, source_weights=sources,
        config=trained.trained_config,
        extra={"training": {"epochs": trained.epoch, "seconds": round(trained.seconds, 1)}})
    return export_model(trained.model, spec, images, preprocess=trained.preprocessing.module(),
                        models_dir=models_dir, overwrite=overwrite)
