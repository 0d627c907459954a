"""Checkpoints: writing and reading them, and rebuilding a trained model from one.

A checkpoint holds ``{model, optimizer, lr_scheduler, epoch, config, preprocessing, labels,
history, rng, test_metrics, world_size, init_from}``; :func:`load_trained` rebuilds the model
with everything export needs. :func:`build_model` makes the registry model a config names
(used to train, and to load).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from training.config import TrainConfig, from_dict
from training.data.pipeline import eval_preset
from training.data.preprocessing import Preprocessing
from training.data.presets import EvalPreset
from training.errors import MissingData

CHECKPOINT = "checkpoint.pt"


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The registry model the config names (pretrained backbone when fine-tuning)."""
    from training.models import get_model

    kwargs = dict(config.model.kwargs)
    if config.finetune.pretrained:
        kwargs["pretrained"] = True
    return get_model(config.model.name, num_classes=num_classes,
                     in_channels=config.model.in_channels,
                     input_size=(config.model.height, config.model.width), **kwargs)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file, then rename)."""
    path = Path(path)
    partial = path.with_suffix(".tmp")
    torch.save(state, partial)
    partial.replace(path)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit`.

    Raises:
        FileNotFoundError: with the path and how checkpoints are made.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise MissingData(f"no checkpoint at {path}; train first (python -m training "
                                "train --config ...) or pass the run's output directory")
    return torch.load(path, map_location=device, weights_only=False)


@dataclass
class Trained:
    """A trained model with everything export needs."""

    model: nn.Module  # the network, eval mode, on CPU
    preprocessing: Preprocessing  # normalisation/whitening fitted on the training set
    eval_preset: EvalPreset  # resize and channels; .to_json() is model.json's input.resize
    config: TrainConfig  # the resolved training config
    labels: list[str]  # class names, in output order
    metrics: dict[str, Any] | None  # test metrics measured at the end of training (or None)
    epoch: int  # epochs completed
    trained_config: dict[str, Any]  # the config as trained (finetune.pretrained kept)
    seconds: float  # training time, summed over the epochs


def load_trained(path: str | Path) -> Trained:
    """Rebuild a trained model from a checkpoint (file or run directory), on the CPU."""
    state = load_checkpoint(path)
    config = from_dict(state["config"])
    config.finetune.pretrained = False  # the weights come from the checkpoint
    model = build_model(config, len(state["labels"]))
    model.load_state_dict(state["model"])
    model.eval()
    return Trained(model=model, preprocessing=Preprocessing.from_state(state["preprocessing"]),
                   eval_preset=eval_preset(config), config=config, labels=list(state["labels"]),
                   metrics=state.get("test_metrics"), epoch=state["epoch"],
                   trained_config=state["config"],
                   seconds=sum(row.get("seconds", 0.0) for row in state.get("history", [])))
