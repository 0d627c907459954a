"""``CONVSERVE_MODELS``: which models a service loads (service/model_selection.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.model_selection import choose, chosen
from service.repository import discover
from service.settings import Settings

SHIPPED = Path(__file__).resolve().parents[2] / "models"
NAMES = sorted(p.name for p in SHIPPED.iterdir() if p.is_dir())


def test_patterns_choose_and_leave_out_in_order() -> None:
    assert chosen(NAMES, []) == set(NAMES)
    assert chosen(NAMES, ["*", "-*-int8"]) == {
        n for n in NAMES if not n.endswith("-int8")}
    assert chosen(NAMES, ["-*-int8"]) == chosen(NAMES, ["*", "-*-int8"])  # leading '-': from all
    assert chosen(NAMES, ["imagenet-*", "-*-int8"]) == {"imagenet-mobilenetv2",
                                                        "imagenet-efficientnet-lite0"}
    assert chosen(NAMES, ["mnist-lenet5"]) == {"mnist-lenet5"}


def test_the_setting_is_parsed_and_checked() -> None:
    assert Settings(models="*, -*-int8").models == ["*", "-*-int8"]
    assert Settings().models == []
    with pytest.raises(ValidationError, match="'Fashion' is not a model name or pattern"):
        Settings(models="Fashion")


def test_the_gpu_choice_leaves_the_int8_models_out_of_the_shipped_ones() -> None:
    found = discover(SHIPPED)
    kept, failures = choose(found, ["*", "-*-int8"], SHIPPED)
    assert failures == {}
    assert {name for name, _ in kept} == {n for n in NAMES if not n.endswith("-int8")}
    assert len({name for name, _ in found}) - len({name for name, _ in kept}) == 4  # int8


def test_a_pattern_that_matches_nothing_says_what_is_there() -> None:
    kept, failures = choose(discover(SHIPPED), ["resnet*"], SHIPPED)
    assert kept == {}
    message = failures["CONVSERVE_MODELS=resnet*"]
    assert message.startswith("'resnet*' matches no model in") and "mnist-lenet5" in message


def test_a_service_loads_only_the_chosen_models(make_client: Callable[..., Any],
                                                shipped_repository: Callable[..., Path]) -> None:
    models = shipped_repository("mnist-lenet5", "fashion-simple-cnn", "fashion-simple-cnn-int8")
    with make_client(models, models="*,-*-int8") as client:
        listed = [m["name"] for m in client.get("/v1/models").json()["models"]]
        assert listed == ["fashion-simple-cnn", "mnist-lenet5"]
        missing = client.post("/v1/models/fashion-simple-cnn-int8/classify",
                              files={"file": ("shoe.png", (SHIPPED.parent / "samples" /
                                                           "shoe.png").read_bytes())})
        assert missing.status_code == 404
    with make_client(models, ready=False, models="resnet*") as client:
        reload = client.post("/v1/repository/reload")
        assert "'resnet*' matches no model" in reload.text, reload.text
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "CONVSERVE_MODELS=resnet*" in ready.text
