"""An int8 model served off the CPU is flagged (log line and /v1/models ``notes``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from model_format import load_card
from service.model_version import ModelVersion, int8_note

REPO = Path(__file__).resolve().parents[2]


def _version(name: str, providers: list[str]) -> ModelVersion:
    path = REPO / "models" / name / "1"
    if not (path / "model.json").is_file():
        pytest.skip(f"models/{name} is not shipped")
    session: Any = SimpleNamespace(providers=providers)
    return ModelVersion(name=name, version=1, path=path, card=load_card(path / "model.json"),
                        sessions={"model": session}, input=None)


def test_int8_on_cuda_says_to_serve_the_float_model() -> None:
    version = _version("imagenet-mobilenetv2-int8", ["CUDAExecutionProvider",
                                                     "CPUExecutionProvider"])
    assert int8_note(version) == (
        "imagenet-mobilenetv2-int8/1 is an int8 (QDQ) model running on CUDAExecutionProvider, "
        "where int8 is likely slower than float (not measured here); serve its float model "
        "imagenet-mobilenetv2 on a GPU (docs/int8.md)")


@pytest.mark.parametrize(("name", "provider"), [
    ("imagenet-mobilenetv2-int8", "CPUExecutionProvider"),
    ("imagenet-mobilenetv2", "CUDAExecutionProvider"),
])
def test_no_note_on_the_cpu_or_for_float_models(name: str, provider: str) -> None:
    assert int8_note(_version(name, [provider])) is None
