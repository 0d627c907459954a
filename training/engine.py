"""The training loop's parts as functions: one epoch, evaluation, freezing the backbone.

:func:`training.trainer.fit` puts them together with seeding (:mod:`training.seeding`),
checkpoints (:mod:`training.checkpoints`) and the run's files.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training import distributed
from training.errors import ConfigError
from training.models.base import ConvNet
from training.optim import group_lrs

FROZEN = "convserve_frozen"  # attribute set on the backbone's normalisation layers while frozen


def set_backbone_trainable(model: nn.Module, trainable: bool) -> int:
    """Freeze or unfreeze every parameter outside ``model.head_parameters()``, and the
    running statistics of the backbone's normalisation layers.

    A frozen layer must not change at all, but batch norm updates its running mean and variance
    in train mode whatever ``requires_grad`` says. As timm's ``freeze`` does, frozen batch-norm
    layers are kept in eval mode: :func:`train_mode` puts them back after ``model.train()``.

    Returns:
        The number of parameters whose ``requires_grad`` is now ``trainable``.
    """
    if not isinstance(model, ConvNet):
        raise ConfigError(f"{type(model).__name__} has no backbone/head split (ConvNet), so its "
                          "backbone cannot be frozen: set finetune.freeze_backbone_epochs=0")
    head = {id(p) for p in model.head_parameters()}
    count = 0
    for parameter in model.parameters():
        if id(parameter) not in head:
            parameter.requires_grad_(trainable)
            count += parameter.numel()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        in_head = bool(own) and all(id(p) in head for p in own)
        if isinstance(module, nn.modules.batchnorm._NormBase) and not in_head:
            setattr(module, FROZEN, not trainable)
    return count


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except normalisation layers frozen by :func:`set_backbone_trainable`
    (they stay in eval mode, so their running statistics do not move)."""
    model.train()
    for module in model.modules():
        if getattr(module, FROZEN, False):
            module.eval()
    return model


def _progress(loader: DataLoader, description: str, enabled: bool) -> Any:
    return tqdm(loader, desc=description, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def train_one_epoch(model: nn.Module, preprocess: nn.Module, loader: DataLoader,
                    optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module,
                    device: torch.device, *, epoch: int,
                    info: distributed.DistInfo | None = None) -> dict[str, Any]:
    """One pass over ``loader``; the scheduler steps every iteration.

    Returns:
        ``train_loss``, ``train_top1`` (over all processes), ``images_per_second`` and ``lr``:
        each named parameter group's learning rate at the epoch's last iteration (the rate
        used, not the one the scheduler set for the next step).
    """
    info = info or distributed.DistInfo(device=device)
    train_mode(model)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, images
    start = time.perf_counter()
    lrs = group_lrs(optimizer)
    bar = _progress(loader, f"epoch {epoch} train", info.is_main)
    for images, labels in bar:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(preprocess(images))
        loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lrs = group_lrs(optimizer)
        scheduler.step()
        with torch.no_grad():
            totals += torch.stack([loss.detach().double() * len(labels),
                                   (logits.argmax(1) == labels).sum().double(),
                                   torch.tensor(len(labels), dtype=torch.float64, device=device)])
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    seconds = time.perf_counter() - start
    loss_sum, correct, count = distributed.all_reduce_sum(totals, info).tolist()
    return {"train_loss": loss_sum / count, "train_top1": correct / count,
            "images_per_second": count / seconds, "lr": lrs}


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
