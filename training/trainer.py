"""A whole training run: :func:`fit` (setup, epochs, checkpoints, test metrics, plots).

A run resumed from a checkpoint (``fit(config, resume=path)``) ends with the same weights as an
uninterrupted run: every RNG is seeded, RNG states are saved and restored, and each epoch's data
order is derived from ``(seed, epoch)`` alone (see :mod:`training.data.pipeline`). That only
holds for the same config, so a resume with a different one (more epochs, another lr, ...) is
refused; ``fit(config, init_from=path)`` is the honest alternative: a new schedule, epoch 1 of
``optim.epochs``, that starts from the checkpoint's weights and fitted preprocessing.
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
from training.config import ConfigError, TrainConfig
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
    monitor: str  # "val", or "test" when the per-epoch evaluation runs on the test split
    init_from: dict[str, Any] | None = None  # {"checkpoint", "epoch"} of a new schedule's start

    def state(self, epoch: int, rng: list[dict[str, Any]], test: dict | None) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(), "epoch": epoch,
                "config": self.config.to_dict(), "preprocessing": self.preprocessing.state(),
                "labels": self.labels, "history": self.history, "rng": rng,
                "test_metrics": test, "world_size": self.info.world_size,
                "init_from": self.init_from}


# Keys that do not change what a run computes: a resume may change them.
RESUME_MAY_CHANGE = ("output_dir", "device", "workers", "checkpoint_every", "data.path", "export")


def config_changes(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """``key: saved -> now`` for every key where ``config`` differs from a checkpoint's config,
    leaving out :data:`RESUME_MAY_CHANGE`."""
    changes: list[str] = []

    def walk(old: Any, new: Any, key: str) -> None:
        if key in RESUME_MAY_CHANGE:
            return
        if isinstance(old, dict) and isinstance(new, dict):
            for name in sorted(set(old) | set(new)):
                walk(old.get(name), new.get(name), f"{key}.{name}" if key else name)
        elif old != new:
            changes.append(f"{key}: {old!r} -> {new!r}")

    walk(saved, config.to_dict(), "")
    return changes


def _check_resume(state: dict[str, Any], config: TrainConfig, resume: str | Path) -> None:
    """Refuse a resume that could not end where an uninterrupted run ends."""
    changes = config_changes(state["config"], config)
    if not changes:
        return
    done = state.get("test_metrics") is not None
    raise ConfigError(
        f"--resume {resume} continues the same run (it would end with the weights an "
        f"uninterrupted run has), but the config differs from the checkpoint's: "
        f"{'; '.join(changes)}. A run resumed with another config (another schedule, more "
        f"epochs{' after a finished run' if done else ''}) does not end where any single run "
        f"ends, so it is refused. To train on from these weights with the new config, start a "
        f"new schedule from the checkpoint: train --init-from {resume} (epoch 1 of "
        f"optim.epochs, fresh optimizer and lr schedule, into another output_dir)")


def _check_init_from(config: TrainConfig, init_from: str | Path) -> None:
    source = Path(init_from)
    source_dir = source if source.is_dir() else source.parent
    if source_dir.resolve() == Path(config.output_dir).resolve():
        raise ConfigError(f"--init-from {init_from} would overwrite its own run; set "
                          f"output_dir to a new directory (--set output_dir=...)")


def _setup(config: TrainConfig, info: distributed.DistInfo, resume: str | Path | None,
           init_from: str | Path | None = None) -> _Run:
    source = resume or init_from
    state = load_checkpoint(source) if source else None
    if state and resume:
        _check_resume(state, config, resume)
    if init_from:
        _check_init_from(config, init_from)
    seed_everything(config.seed + info.rank)
    labels = run_labels(config)
    # Built first: a layer size that does not work (O = (W - K + 2P)/S + 1) is refused before
    # any data is read or preprocessing fitted. No RNG is drawn from before it, as before.
    model = build_model(config, len(labels)).to(info.device)
    train_set = build_split(config, config.data.train_split, train=True)
    monitored = config.data.val_split or config.data.test_split
    monitor = "test" if monitored == config.data.test_split else "val"
    val_set = build_split(config, monitored, train=False)
    if monitor == "test" and info.is_main:
        logger.info("no validation split (data.val_split is null): each epoch is evaluated on "
                    "the test split %r, logged as test_loss/test_top1 and drawn as 'test'; "
                    "nothing is selected by it", monitored)
    prep = (Preprocessing.from_state(state["preprocessing"]) if state
            else fit_from_config(config, train_set))
    optimizer = build_optimizer(model, config)
    steps = len(train_loader(config, train_set, 0, distributed=info.distributed))
    scheduler = build_scheduler(optimizer, config, steps)
    run = _Run(config, info, labels, model, prep, prep.module().to(info.device), optimizer,
               scheduler, train_set, eval_loader(config, val_set), [], 0, monitor)
    if state and init_from:
        model.load_state_dict(state["model"])
        run.init_from = {"checkpoint": str(init_from), "epoch": state["epoch"]}
        logger.info("new %d-epoch schedule from the weights and fitted preprocessing of %s "
                    "(epoch %d); fresh optimizer and lr schedule: this is not the run %s would "
                    "have been with more epochs", config.optim.epochs, init_from, state["epoch"],
                    init_from)
    elif state:
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
        if state["epoch"] >= config.optim.epochs:
            logger.info("resumed from %s: the run already finished (epoch %d of %d); nothing "
                        "to train, the test metrics and plots are written again", resume,
                        state["epoch"], config.optim.epochs)
        else:
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
                   description=f"epoch {epoch} {run.monitor}", show_progress=info.is_main)
    role = run.monitor
    return {"epoch": epoch, **train, f"{role}_loss": val["loss"], f"{role}_top1": val["top1"],
            f"{role}_top5": val["top5"], "seconds": time.perf_counter() - start, "_val": val}


def fit(config: TrainConfig, *, resume: str | Path | None = None,
        init_from: str | Path | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Train as ``config`` says, writing into ``config.output_dir`` (rank 0 only).

    Writes ``config.yaml``, ``checkpoint.pt`` (every ``checkpoint_every`` epochs and at the
    end), ``log.jsonl`` (one line per epoch: ``train_*``, ``val_*`` or, without a validation
    split, ``test_*``, and ``lr`` per named group), and after the last epoch ``metrics.json``,
    ``curves.png`` and ``confusion.png`` (test split).

    Args:
        config: The resolved configuration.
        resume: A checkpoint (or run directory) of the same config to continue from.
        init_from: A checkpoint whose weights and preprocessing start a new schedule.
        stop_after: Stop after this epoch (as if interrupted); used to test resuming.

    Returns:
        The test metrics (``dataset``, ``split``, ``images``, ``top1``, ``top5``, ``loss``),
        or the last epoch's log row when stopped early.

    Raises:
        ConfigError: ``resume`` with a config that differs from the checkpoint's, or
            ``init_from`` into the checkpoint's own directory.
    """
    if resume and init_from:
        raise ConfigError("give --resume (continue the same run) or --init-from (a new "
                          "schedule from a checkpoint's weights), not both")
    info = distributed.setup(config.device)
    try:
        return _fit(config, info, resume, init_from, stop_after)
    finally:
        distributed.cleanup(info)


def _fit(config: TrainConfig, info: distributed.DistInfo, resume: str | Path | None,
         init_from: str | Path | None, stop_after: int | None) -> dict[str, Any]:
    out = Path(config.output_dir)
    run = _setup(config, info, resume, init_from)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.yaml")
        # log.jsonl holds this run's epochs only: a fresh run starts it anew, a resumed one
        # rewrites it from the checkpoint's history (epochs after the checkpoint are redone).
        (out / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in run.history))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
    epochs, row, val = config.optim.epochs, {}, None
    for epoch in range(run.start_epoch + 1, epochs + 1):
        row = _train_epoch(run, epoch, criterion)
        val = row.pop("_val")
        run.history.append(row)
        if info.is_main:
            append_jsonl(out / "log.jsonl", row)
        role = run.monitor
        logger.info("epoch %d/%d train loss %.4f top1 %.4f | %s loss %.4f top1 %.4f | %.0f s",
                    epoch, epochs, row["train_loss"], row["train_top1"], role,
                    row[f"{role}_loss"], row[f"{role}_top1"], row["seconds"])
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
    if val is None or run.monitor != "test":
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
