"""pyproject's extras: each documented way to combine training and serving installs exactly one
ONNX Runtime package (docs/training.md, Installing training)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

EXTRAS = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())[
    "project"]["optional-dependencies"]
LINUX_X86 = {"sys_platform": "linux", "platform_machine": "x86_64"}
OTHER = {"sys_platform": "darwin", "platform_machine": "arm64"}


def _applies(requirement: str, platform: dict[str, str]) -> bool:
    """Whether a requirement's marker holds on ``platform`` (the two forms pyproject uses)."""
    if ";" not in requirement:
        return True
    marker = requirement.split(";", 1)[1]
    linux_x86 = platform == LINUX_X86
    if "sys_platform == 'linux' and platform_machine == 'x86_64'" in marker:
        return linux_x86
    if "sys_platform != 'linux' or platform_machine != 'x86_64'" in marker:
        return not linux_x86
    raise AssertionError(f"a marker this test does not read: {marker}")


def runtimes(*extras: str, platform: dict[str, str]) -> set[str]:
    """The ONNX Runtime distributions ``pip install '.[extras]'`` asks for on ``platform``."""
    found: set[str] = set()
    pending = list(extras)
    while pending:
        for requirement in EXTRAS[pending.pop()]:
            if not _applies(requirement, platform):
                continue
            name = re.split(r"[\[=<>~;! ]", requirement, maxsplit=1)[0]
            if name == "convserve":
                pending += re.findall(r"\[([\w-]+)\]", requirement)[0].split(",")
            elif name.startswith("onnxruntime"):
                found.add(name)
    return found


def test_each_documented_combination_has_one_onnx_runtime() -> None:
    for platform in (LINUX_X86, OTHER):
        for combination in (("serve",), ("serve-cpu",), ("train",), ("train-cpu",),
                            ("serve", "train"), ("serve-cpu", "train-cpu"),
                            ("train", "serve", "dev")):
            assert len(runtimes(*combination, platform=platform)) == 1, (combination, platform)
    assert runtimes("serve", "train", platform=LINUX_X86) == {"onnxruntime-gpu"}
    assert runtimes("serve-cpu", "train-cpu", platform=LINUX_X86) == {"onnxruntime"}
    # The mix docs/training.md warns against is a mix indeed:
    assert runtimes("serve-cpu", "train", platform=LINUX_X86) == {"onnxruntime",
                                                                  "onnxruntime-gpu"}


def test_train_and_train_cpu_differ_only_in_their_onnx_runtime() -> None:
    shared = [r for r in EXTRAS["train"] if not r.startswith("onnxruntime")]
    assert shared == [r for r in EXTRAS["train-cpu"] if not r.startswith("onnxruntime")]
    assert shared == ["convserve[train-common]"]
    assert any(r.startswith("torch==") for r in EXTRAS["train-common"])
