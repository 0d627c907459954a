"""A whole training run: :func:`fit` (setup, epochs, checkpoints, test metrics, plots).

A run resumed from a checkpoint (``fit(config, resume=path)``) ends with the same weights as an
uninterrupted run: every RNG is seeded, RNG states are saved and restored, and each epoch's data
order is derived from ``(seed, epoch)`` alone (see :mod:`training.data.pipeline`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from training import distributed
from training.checkpoints import CHECKPOINT, build_model, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.data.pipeline import (
    DATASET_NAMES,
    build_split,
    eval_loader,
    fit_from_config,
    run_labels,
    train_loader,
)
from training.data.preprocessing import Preprocessing
from training.engine import evaluate, set_backbone_trainable, train_one_epoch
from training.optim import build_optimizer, build_scheduler
from training.plots import plot_confusion, plot_curves
from training.seeding import rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer, in order: equal digests mean equal weights."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_ranks_agree(model: nn.Module, info: distributed.DistInfo) -> list[str]:
    """Every rank's :func:`weights_digest`; raises if DDP left the ranks with different weights."""
    digests = [weights_digest(model)]
    if info.distributed:
        digests = [""] * info.world_size
        torch.distributed.all_gather_object(digests, weights_digest(model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP ranks ended with different weights: {digests}")
        logger.info("all %d ranks hold the same weights (sha256 %s)", info.world_size,
                    digests[0][:16])
    return digests


def _gather_rng(info: distributed.DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (gathered to all ranks under DDP)."""
    if not info.distributed:
        return [rng_state()]
    states: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


@dataclass
class _Run:
    """Everything one training run holds."""

    config: TrainConfig
    info: distributed.DistInfo
    labels: list[str]
    model: nn.Module
    preprocessing: Preprocessing
    preprocess: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_set: Any
    val_loader: DataLoader
    history: list[dict[str, Any]]
    start_epoch: int

    def state(self, epoch: int, rng: list[dict[str, Any]], test: dict | None) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(), "epoch": epoch,
                "config": self.config.to_dict(), "preprocessing": self.preprocessing.state(),
                "labels": self.labels, "history": self.history, "rng": rng,
                "test_metrics": test, "world_size": self.info.world_size}


def _setup(config: TrainConfig, info: distributed.DistInfo, resume: str | Path | None) -> _Run:
    seed_everything(config.seed + info.rank)
    labels = run_labels(config)
    train_set = build_split(config, config.data.train_split, train=True)
    val_set = build_split(config, config.data.val_split or config.data.test_split, train=False)
    state = load_checkpoint(resume) if resume else None
    prep = (Preprocessing.from_state(state["preprocessing"]) if state
            else fit_from_config(config, train_set))
    model = build_model(config, len(labels)).to(info.device)
    optimizer = build_optimizer(model, config)
    steps = len(train_loader(config, train_set, 0, distributed=info.distributed))
    scheduler = build_scheduler(optimizer, config, steps)
    run = _Run(config, info, labels, model, prep, prep.module().to(info.device), optimizer,
               scheduler, train_set, eval_loader(config, val_set), [], 0)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        run.history, run.start_epoch = list(state["history"]), state["epoch"]
        if info.rank < len(state["rng"]):
            set_rng_state(state["rng"][info.rank])
        else:  # resumed with more processes than saved: still deterministic, not identical
            logger.warning("checkpoint has RNG states for %d processes; rank %d reseeds",
                           len(state["rng"]), info.rank)
            seed_everything(config.seed + info.rank + 1000 * state["epoch"])
        logger.info("resumed from %s after epoch %d", resume, state["epoch"])
    return run


def _train_epoch(run: _Run, epoch: int, criterion: nn.Module) -> dict[str, Any]:
    config, info = run.config, run.info
    if config.finetune.freeze_backbone_epochs:
        frozen = epoch <= config.finetune.freeze_backbone_epochs
        count = set_backbone_trainable(run.model, not frozen)
        logger.info("epoch %d: backbone (%d parameters) %s", epoch, count,
                    "frozen" if frozen else "trainable")
    network = distributed.wrap(run.model, info)
    loader = train_loader(config, run.train_set, epoch, distributed=info.distributed)
    start = time.perf_counter()
    train = train_one_epoch(network, run.preprocess, loader, run.optimizer, run.scheduler,
                            criterion, info.device, epoch=epoch, info=info)
    distributed.broadcast_buffers(run.model, info)
    val = evaluate(run.model, run.preprocess, run.val_loader, info.device, len(run.labels),
                   description=f"epoch {epoch} val", show_progress=info.is_main)
    return {"epoch": epoch, **train, "val_loss": val["loss"], "val_top1": val["top1"],
            "val_top5": val["top5"], "lr": [g["lr"] for g in run.optimizer.param_groups],
            "seconds": time.perf_counter() - start, "_val": val}


def fit(config: TrainConfig, *, resume: str | Path | None = None,
        stop_after: int | None = None) -> dict[str, Any]:
    """Train as ``config`` says, writing into ``config.output_dir`` (rank 0 only).

    Writes ``config.yaml``, ``checkpoint.pt`` (every ``checkpoint_every`` epochs and at the
    end), ``log.jsonl`` (one line per epoch), and after the last epoch ``metrics.json``,
    ``curves.png`` and ``confusion.png`` (test split).

    Args:
        config: The resolved configuration.
        resume: A checkpoint (or run directory) to continue from.
        stop_after: Stop after this epoch (as if interrupted); used to test resuming.

    Returns:
        The test metrics (``dataset``, ``split``, ``images``, ``top1``, ``top5``, ``loss``),
        or the last epoch's log row when stopped early.
    """
    info = distributed.setup(config.device)
    try:
        return _fit(config, info, resume, stop_after)
    finally:
        distributed.cleanup(info)


def _fit(config: TrainConfig, info: distributed.DistInfo, resume: str | Path | None,
         stop_after: int | None) -> dict[str, Any]:
    out = Path(config.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.yaml")
    run = _setup(config, info, resume)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
    epochs, row, val = config.optim.epochs, {}, None
    for epoch in range(run.start_epoch + 1, epochs + 1):
        row = _train_epoch(run, epoch, criterion)
        val = row.pop("_val")
        run.history.append(row)
        if info.is_main:
            append_jsonl(out / "log.jsonl", row)
        logger.info("epoch %d/%d train loss %.4f top1 %.4f | val loss %.4f top1 %.4f | %.0f s",
                    epoch, epochs, row["train_loss"], row["train_top1"], row["val_loss"],
                    row["val_top1"], row["seconds"])
        last = epoch == epochs or epoch == stop_after
        if last or epoch % config.checkpoint_every == 0:
            rng = _gather_rng(info)
            if info.is_main and not epoch == epochs:
                save_checkpoint(out / CHECKPOINT, run.state(epoch, rng, None))
        if stop_after is not None and epoch >= stop_after and epoch < epochs:
            return row
    return _finish(run, out, val)


def _finish(run: _Run, out: Path, val: dict[str, Any] | None) -> dict[str, Any]:
    """Test metrics, plots and the final checkpoint."""
    config, info = run.config, run.info
    test_split = config.data.test_split
    if val is None or (config.data.val_split or test_split) != test_split:
        test_set = build_split(config, test_split, train=False)
        val = evaluate(run.model, run.preprocess, eval_loader(config, test_set), info.device,
                       len(run.labels), description="test", show_progress=info.is_main)
    test = {"dataset": DATASET_NAMES[config.data.name], "split": test_split,
            "images": val["images"], "top1": val["top1"], "top5": val["top5"],
            "loss": val["loss"], "confusion": val["confusion"]}
    rng = _gather_rng(info)
    digests = _check_ranks_agree(run.model, info)
    if info.is_main:
        state = run.state(config.optim.epochs, rng, test)
        state["rank_weight_digests"] = digests
        save_checkpoint(out / CHECKPOINT, state)
        (out / "metrics.json").write_text(json.dumps(test, indent=1))
        plot_curves(run.history, out / "curves.png")
        plot_confusion(test["confusion"], run.labels, out / "confusion.png",
                       title=f"{test['dataset']} {test_split}: top-1 {test['top1']:.4f}")
    logger.info("test (%s, %d images): top-1 %.4f top-5 %.4f", test_split, test["images"],
                test["top1"], test["top5"])
    distributed.barrier(info)
    return test


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON object as a line."""
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
