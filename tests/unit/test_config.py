"""Config loading: quick runs (``--set optim.epochs=1``) clamp warm-up and freezing, logged."""

from __future__ import annotations

import logging

import pytest

from training.config import ConfigError, load_config


def test_one_epoch_clamps_warmup_and_freezing_with_a_note(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.config"):
        config = load_config("fer2013-mobilenetv2-finetune",
                             ["data.path=fer.csv", "optim.epochs=1", "optim.warmup_epochs=2"])
    assert config.optim.epochs == 1 and config.optim.warmup_epochs == 1.0
    assert config.finetune.freeze_backbone_epochs == 0
    assert [r.getMessage() for r in caplog.records] == [
        "optim.warmup_epochs 2 is more than optim.epochs 1: clamped to 1 (the lr warms up over "
        "the whole run)",
        "finetune.freeze_backbone_epochs 2 leaves no epoch of optim.epochs 1 to train the "
        "backbone: clamped to 0"]


def test_configs_that_fit_are_not_touched(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.config"):
        config = load_config("fer2013-mobilenetv2-finetune", ["data.path=fer.csv"])
    assert (config.optim.epochs, config.optim.warmup_epochs,
            config.finetune.freeze_backbone_epochs) == (15, 1.0, 2)
    three = load_config("fer2013-mobilenetv2-finetune", ["data.path=fer.csv", "optim.epochs=3"])
    assert three.finetune.freeze_backbone_epochs == 2
    assert caplog.records == []
    with pytest.raises(ConfigError, match="optim.warmup_epochs must not be negative"):
        load_config(None, ["optim.warmup_epochs=-1"])
