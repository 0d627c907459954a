"""Config loading: quick runs (``--set optim.epochs=1``) clamp warm-up and freezing, logged;
the README's config block is a valid config."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml

from training.config import ConfigError, DataConfig, from_dict, load_config


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


def test_readme_config_block_is_a_valid_config_with_the_quick_run_keys() -> None:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    section = readme.split("### Configs: YAML + `--set`", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    config = from_dict(yaml.safe_load(block.group(1)))
    assert config.data.val_split == "val" and "default null" in block.group(1)
    assert DataConfig().val_split is None  # what the block's comment says
    assert config.data.train_limit is None and "train_limit" in block.group(1)
    assert "eval_limit" in block.group(1)
