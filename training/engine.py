"""The training loop's parts as functions: one epoch, evaluation, seeding, checkpoints.

:func:`training.trainer.fit` puts them together. Checkpoints hold ``{model, optimizer,
lr_scheduler, epoch, config, preprocessing, labels, history, rng, test_metrics}``;
:func:`load_trained` rebuilds the model with everything export needs.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training import distributed
from training.config import TrainConfig, from_dict
from training.data import dataset_labels
from training.data.pipeline import (
    eval_preset,
)
from training.data.preprocessing import Preprocessing
from training.data.presets import EvalPreset

logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "fer2013": "FER2013",
                 "folder": "image folder"}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state that training draws from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The registry model the config names (pretrained backbone when fine-tuning)."""
    from training.models import get_model

    kwargs = dict(config.model.kwargs)
    if config.finetune.pretrained:
        kwargs["pretrained"] = True
    return get_model(config.model.name, num_classes=num_classes,
                     in_channels=config.model.in_channels,
                     input_size=(config.model.height, config.model.width), **kwargs)


def set_backbone_trainable(model: nn.Module, trainable: bool) -> int:
    """Freeze or unfreeze every parameter outside ``model.head_parameters()``.

    Returns:
        The number of parameters whose ``requires_grad`` is now ``trainable``.
    """
    head = {id(p) for p in model.head_parameters()}
    count = 0
    for parameter in model.parameters():
        if id(parameter) not in head:
            parameter.requires_grad_(trainable)
            count += parameter.numel()
    return count


def _progress(loader: DataLoader, description: str, enabled: bool) -> Any:
    return tqdm(loader, desc=description, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def train_one_epoch(model: nn.Module, preprocess: nn.Module, loader: DataLoader,
                    optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module,
                    device: torch.device, *, epoch: int,
                    info: distributed.DistInfo | None = None) -> dict[str, float]:
    """One pass over ``loader``; the scheduler steps every iteration.

    Returns:
        ``train_loss``, ``train_top1`` (over all processes) and ``images_per_second``.
    """
    info = info or distributed.DistInfo(device=device)
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, images
    start = time.perf_counter()
    bar = _progress(loader, f"epoch {epoch} train", info.is_main)
    for images, labels in bar:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(preprocess(images))
        loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            totals += torch.stack([loss.detach().double() * len(labels),
                                   (logits.argmax(1) == labels).sum().double(),
                                   torch.tensor(len(labels), dtype=torch.float64, device=device)])
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    seconds = time.perf_counter() - start
    loss_sum, correct, count = distributed.all_reduce_sum(totals, info).tolist()
    return {"train_loss": loss_sum / count, "train_top1": correct / count,
            "images_per_second": count / seconds}


@torch.inference_mode()
def evaluate(model: nn.Module, preprocess: nn.Module, loader: DataLoader, device: torch.device,
             num_classes: int, *, description: str = "eval",
             show_progress: bool = True) -> dict[str, Any]:
    """Loss, top-1, top-5 and the confusion matrix (rows: true class) over ``loader``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, top5, count = 0.0, 0, 0
    k = min(5, num_classes)
    for images, labels in _progress(loader, description, show_progress):
        images, labels = images.to(device), labels.to(device)
        logits = model(preprocess(images))
        loss_sum += criterion(logits, labels).item()
        top5 += (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum().item()
        pairs = labels.cpu() * num_classes + logits.argmax(1).cpu()
        confusion += torch.bincount(pairs, minlength=num_classes**2).view(num_classes, -1)
        count += len(labels)
    return {"loss": loss_sum / count, "top1": confusion.diag().sum().item() / count,
            "top5": top5 / count, "images": count, "confusion": confusion.tolist()}


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
        raise FileNotFoundError(f"no checkpoint at {path}; train first (python -m training "
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
                   metrics=state.get("test_metrics"), epoch=state["epoch"])


def run_labels(config: TrainConfig) -> list[str]:
    """Class names: ``export.labels`` or the data set's (their counts must agree)."""
    labels = dataset_labels(config.data.name, config.data.path)
    if config.export.labels is not None:
        if len(config.export.labels) != len(labels):
            raise ValueError(f"export.labels has {len(config.export.labels)} names but the data "
                             f"set has {len(labels)} classes: {labels}")
        return list(config.export.labels)
    return list(labels)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON object as a line."""
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
