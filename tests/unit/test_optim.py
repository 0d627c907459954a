"""Parameter groups (head/backbone lrs, no decay on 1-D parameters) and the lr schedules."""

from __future__ import annotations

import logging

import pytest
import torch

from training.checkpoints import build_model
from training.config import load_config
from training.optim import (
    build_optimizer,
    build_scheduler,
    group_lrs,
    lr_factor,
    param_groups,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["lenet5", "mini_xception"])
def test_groups_have_promised_lrs_and_decay(name: str, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(None, [f"model.name={name}", "model.height=48", "model.width=48"])
    model = build_model(config, 7)
    with caplog.at_level(logging.INFO, logger="training.optim"):
        groups = param_groups(model, lr=0.1, weight_decay=1e-4, head_lr=0.1, backbone_lr=0.01)
    head = {id(p) for p in model.head_parameters()}
    assert head, "the model must expose its classifier head"
    seen = [id(p) for group in groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each exactly once
    for group in groups:
        is_head = group["name"].startswith("head")
        assert group["lr"] == (0.1 if is_head else 0.01)
        assert all((id(p) in head) == is_head for p in group["params"])
        one_d = [p.ndim <= 1 for p in group["params"]]
        if group["name"].endswith("no_decay"):
            assert all(one_d) and group["weight_decay"] == 0
        else:
            assert not any(one_d) and group["weight_decay"] == 1e-4
    for group in groups:
        count = sum(p.numel() for p in group["params"])
        assert any(group["name"] in r.message and f"{count} parameters" in r.message
                   and f"lr {group['lr']:.3g}" in r.message for r in caplog.records)


def test_finetune_config_builds_discriminative_sgd() -> None:
    config = load_config(None, ["model.name=lenet5", "optim.lr=0.2", "optim.nesterov=true",
                                "finetune.backbone_lr_scale=0.1"])
    optimizer = build_optimizer(build_model(config, 10), config)
    assert isinstance(optimizer, torch.optim.SGD)
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates["head"] == 0.2 and rates["backbone"] == pytest.approx(0.02)
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in optimizer.param_groups)
    explicit = load_config(None, ["model.name=lenet5", "finetune.head_lr=0.3",
                                  "finetune.backbone_lr=0.001"])
    rates = {g["name"]: g["lr"] for g in build_optimizer(build_model(explicit, 10),
                                                         explicit).param_groups}
    assert rates["head"] == 0.3 and rates["backbone"] == 0.001


def test_warmup_then_cosine_and_step() -> None:
    common = {"total_steps": 100, "warmup_steps": 10, "steps_per_epoch": 10}
    cosine = [lr_factor(s, schedule="cosine", **common) for s in range(100)]
    assert cosine[0] == pytest.approx(0.1) and cosine[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(cosine[:9], cosine[1:10], strict=True))  # linear warm-up
    assert all(a >= b for a, b in zip(cosine[10:-1], cosine[11:], strict=True))  # then decays
    assert cosine[55] == pytest.approx(0.5, abs=1e-9) and cosine[-1] < 0.001
    step = [lr_factor(s, schedule="step", step_epochs=3, gamma=0.5, **common) for s in range(100)]
    assert step[10:30] == [1.0] * 20 and step[30] == 0.5 and step[60] == 0.25
    with pytest.raises(ValueError, match="step or cosine"):
        lr_factor(50, schedule="linear", **common)


def test_scheduler_keeps_group_ratio_per_iteration() -> None:
    config = load_config(None, ["model.name=lenet5", "optim.epochs=2", "optim.warmup_epochs=1",
                                "finetune.head_lr=0.1", "finetune.backbone_lr=0.01"])
    optimizer = build_optimizer(build_model(config, 10), config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=4)
    seen = []
    for _ in range(8):
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        seen.append(lrs["head"])
        assert lrs["backbone"] == pytest.approx(lrs["head"] / 10)
        optimizer.step()
        scheduler.step()
    assert seen[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert seen[4] == pytest.approx(0.1) and seen[7] < seen[5]


def test_group_lrs_names_each_part_with_the_rate_it_used() -> None:
    config = load_config("fer2013-mobilenetv2-finetune",
                         ["data.path=unused.csv", "finetune.pretrained=false",
                          "model.height=32", "model.width=32"])
    optimizer = build_optimizer(build_model(config, 7), config)
    assert group_lrs(optimizer) == {"head": 0.02, "backbone": 0.004}
    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
    assert group_lrs(plain) == {"0": 0.5}
