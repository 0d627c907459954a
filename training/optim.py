"""Parameter groups, SGD and learning-rate schedules.

:func:`param_groups` is the one place that decides each parameter's learning rate and weight
decay: the classifier head (``model.head_parameters()``, the new layers when fine-tuning) at the
head lr, every other (reused) parameter at the backbone lr, and no weight decay on 1-D
parameters (biases, batch-norm scales and shifts). Schedules step per iteration.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn as nn

from training.config import TrainConfig
from training.errors import ConfigError

logger = logging.getLogger(__name__)


def _head_ids(model: nn.Module) -> set[int]:
    head = getattr(model, "head_parameters", None)
    if head is None:
        return set()
    try:
        return {id(p) for p in head()}
    except NotImplementedError:
        return set()


def param_groups(model: nn.Module, *, lr: float, weight_decay: float,
                 head_lr: float | None = None,
                 backbone_lr: float | None = None) -> list[dict[str, Any]]:
    """Split the model's parameters into named groups with their lr and weight decay.

    Args:
        model: Usually a :class:`~training.models.base.ConvNet`.
        lr: Default learning rate.
        weight_decay: Applied to parameters with 2 or more dimensions only.
        head_lr: Learning rate of ``model.head_parameters()`` (default ``lr``).
        backbone_lr: Learning rate of every other parameter (default ``lr``).

    Returns:
        Groups ``head``, ``head_no_decay``, ``backbone``, ``backbone_no_decay`` (empty ones
        left out), each with ``name``, ``params``, ``lr`` and ``weight_decay``.
    """
    head_ids = _head_ids(model)
    rates = {"head": lr if head_lr is None else head_lr,
             "backbone": lr if backbone_lr is None else backbone_lr}
    buckets: dict[str, list[nn.Parameter]] = {}
    for parameter in model.parameters():
        part = "head" if id(parameter) in head_ids else "backbone"
        name = part if parameter.ndim > 1 else f"{part}_no_decay"
        buckets.setdefault(name, []).append(parameter)
    groups = []
    for name in ("head", "head_no_decay", "backbone", "backbone_no_decay"):
        if name not in buckets:
            continue
        params = buckets[name]
        decay = 0.0 if name.endswith("_no_decay") else weight_decay
        group_lr = rates[name.split("_")[0]]
        groups.append({"name": name, "params": params, "lr": group_lr, "weight_decay": decay})
        logger.info("param group %-17s %3d tensors %10d parameters lr %.3g weight_decay %g",
                    name, len(params), sum(p.numel() for p in params), group_lr, decay)
    return groups


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Learning rate per named group, e.g. ``{"head": 0.05, "backbone": 0.005}``.

    The ``_no_decay`` halves share their part's rate and are folded into it; a group without a
    name is called by its index.
    """
    rates: dict[str, float] = {}
    for index, group in enumerate(optimizer.param_groups):
        name = str(group.get("name", index)).removesuffix("_no_decay")
        rates.setdefault(name, float(group["lr"]))
    return rates


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD (momentum, optional Nesterov) over :func:`param_groups` as the config says."""
    optim, finetune = config.optim, config.finetune
    backbone_lr = finetune.backbone_lr
    if backbone_lr is None:
        backbone_lr = optim.lr * finetune.backbone_lr_scale
    groups = param_groups(model, lr=optim.lr, weight_decay=optim.weight_decay,
                          head_lr=finetune.head_lr, backbone_lr=backbone_lr)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum,
                           nesterov=optim.nesterov and optim.momentum > 0)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str,
              steps_per_epoch: int, step_epochs: int = 10, gamma: float = 0.1,
              min_ratio: float = 0.0) -> float:
    """Multiplier of every group's peak lr at iteration ``step`` (0-based).

    Linear warm-up to 1 over ``warmup_steps``, then ``cosine`` decay to ``min_ratio`` at
    ``total_steps`` or ``step`` decay by ``gamma`` every ``step_epochs`` epochs.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "step":
        return gamma ** (step // (step_epochs * steps_per_epoch))
    if schedule != "cosine":
        raise ConfigError(f"unknown schedule {schedule!r}; use step or cosine")
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration :class:`~torch.optim.lr_scheduler.LambdaLR` following :func:`lr_factor`."""
    optim = config.optim

    def factor(step: int) -> float:
        return lr_factor(step, total_steps=optim.epochs * steps_per_epoch,
                         warmup_steps=round(optim.warmup_epochs * steps_per_epoch),
                         schedule=optim.schedule, steps_per_epoch=steps_per_epoch,
                         step_epochs=optim.step_epochs, gamma=optim.gamma,
                         min_ratio=optim.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
