"""The convserve-train CLI end to end: --help, a tiny train run with --set, evaluate, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.cli import main

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "finetune", "evaluate", "export"])
def test_every_subcommand_explains_itself(command: str) -> None:
    result = _cli(command, "--help")
    assert result.returncode == 0 and f"convserve-train {command}" in result.stdout
    if command in ("train", "finetune"):
        assert "--set KEY=VALUE" in result.stdout and "optim.{epochs" in result.stdout


@pytest.mark.slow
def test_top_level_help_lists_commands_and_examples() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for word in ("train", "finetune", "evaluate", "export", "--set", "torchrun"):
        assert word in result.stdout


@pytest.mark.slow
def test_train_then_evaluate_through_the_cli(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    result = _cli("train", "--config", "training/configs/mnist-lenet5.yaml",
                  "--set", "data.train_limit=1000", "--set", "data.eval_limit=300",
                  "--set", "optim.epochs=2", "--set", "optim.batch_size=50",
                  "--set", "device=cpu", "--set", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["images"] == 300 and printed["top1"] > 0.5
    for name in ("checkpoint.pt", "config.yaml", "log.jsonl", "metrics.json", "curves.png",
                 "confusion.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["optim"]["epochs"] == 2 and saved["data"]["train_limit"] == 1000
    assert saved["model"]["name"] == "lenet5"  # from the YAML file
    assert "param group" in result.stderr and "epoch 2/2" in result.stderr
    evaluated = _cli("evaluate", str(out), "--set", "data.eval_limit=300")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert report["images"] == 300 and report["top1"] == pytest.approx(printed["top1"])
    models = tmp_path / "models"
    assert main(["export", str(out), "--name", "cli-digits", "--version", "3",
                 "--models-dir", str(models)]) == 0
    meta = json.loads((models / "cli-digits" / "3" / "model.json").read_text())
    assert (models / "cli-digits" / "3" / "model.onnx").stat().st_size > 0
    assert meta["labels"] == [str(d) for d in range(10)] and meta["input"]["channels"] == 1
    assert meta["metrics"]["measured"]["top1"] == pytest.approx(printed["top1"])
    assert meta["provenance"]["config"]["data"]["train_limit"] == 1000
    capsys.readouterr()
    assert main(["export", str(out), "--name", "cli-digits", "--version", "3",
                 "--models-dir", str(models)]) == 2  # refuses to overwrite silently
    assert capsys.readouterr().err == (
        f"error: {models / 'cli-digits' / '3'} already holds a model; export a new version or "
        "pass --overwrite\n")  # the flag of this command, not the Python keyword
    pin = models / "cli-digits" / "default_version"
    assert not pin.exists()  # no pin: the service serves the newest version
    capsys.readouterr()
    assert main(["export", str(out), "--name", "cli-digits", "--version", "4",
                 "--models-dir", str(models), "--make-default"]) == 0
    assert pin.read_text() == "4\n"
    capsys.readouterr()
    assert main(["export", str(out), "--name", "cli-digits", "--version", "5",
                 "--models-dir", str(models)]) == 0
    assert pin.read_text() == "4\n"
    assert "default_version still names version 4" in capsys.readouterr().err


def test_bad_overrides_fail_with_the_valid_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", "mnist-lenet5", "--set", "optim.learning_rate=0.1"]) == 2
    error = capsys.readouterr().err
    assert "unknown config key 'optim.learning_rate'" in error and "lr, momentum, nesterov" in error
    assert main(["train", "--config", "fer2013-vgg-small"]) == 2
    assert "--set data.path=" in capsys.readouterr().err
    assert main(["train", "--config", "no-such-config"]) == 2
    assert "shipped configs: " in capsys.readouterr().err
    assert main(["train", "--config", "mnist-lenet5", "--set", "optim.lr"]) == 2
    assert "--set expects key=value" in capsys.readouterr().err


def test_layer_sizes_are_refused_before_any_data_as_the_readme_shows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (REPO / "docs" / "training.md").read_text()
    command = next(line for line in readme.splitlines()
                   if line.startswith("python -m training train --config mnist-lenet5 --set "
                                      "model.name=alexnet"))
    quoted = re.search(r"```\n+```\n(.*?)\n```", readme.split(command, 1)[1], re.S)
    assert quoted is not None  # the block after the command's: what it prints
    args = command.split()[3:] + ["--set", f"output_dir={tmp_path / 'run'}"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == quoted.group(1)
    assert not (tmp_path / "run").exists()  # no config.yaml, no preprocessing fitted


NO_TORCH = """
import sys
from importlib.abc import MetaPathFinder

class NoTorch(MetaPathFinder):  # the serving install: no torch
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
sys.argv[0] = "python -m training"
from training.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args", [["models"], ["train", "--config", "mnist-lenet5"],
                                  ["export", "runs/x", "--name", "x"]])
def test_without_torch_one_line_names_the_install(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "no module 'torch'" in result.stderr and "pip install -e '.[train]'" in result.stderr
    assert "6.2 GB" in result.stderr


def test_an_unknown_model_is_one_line_without_quotes(capsys: pytest.CaptureFixture[str]) -> None:
    """A user's mistake: ``error: <message>``, the message as written (no KeyError quotes)."""
    from training.models import list_models

    assert main(["train", "--config", "mnist-lenet5", "--set", "model.name=resnet18"]) == 2
    assert capsys.readouterr().err == (
        f"error: unknown model 'resnet18'; valid names: {', '.join(list_models())}\n")


def test_a_missing_checkpoint_is_one_line(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    for extra in ([], ["--quantize", "int8"]):
        assert main(["export", str(tmp_path / "run"), "--name", "x", *extra]) == 2
        assert capsys.readouterr().err == (
            f"error: no checkpoint at {tmp_path / 'run'}; train first (python "
            "-m training train --config ...) or pass the run's output directory\n")


@pytest.mark.parametrize("bug", [KeyError("finetune"), ValueError("shapes"),
                                 RuntimeError("CUDA error")])
def test_a_bug_keeps_its_traceback(bug: Exception, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    """Only the errors training defines for users (training/errors.py) become one line; a
    KeyError, ValueError or RuntimeError from inside is a bug and propagates as it is."""
    import training.export_run

    def export_checkpoint(*args: object, **kwargs: object) -> Path:
        raise bug

    monkeypatch.setattr(training.export_run, "export_checkpoint", export_checkpoint)
    with pytest.raises(type(bug)) as caught:
        main(["export", str(tmp_path), "--name", "x"])
    assert caught.value is bug


def test_user_errors_keep_their_builtin_kinds_and_read_as_written() -> None:
    from training.errors import ConfigError, UnknownName, UserError, VersionExists

    error = UnknownName("unknown model 'x'; valid names: a, b")
    assert isinstance(error, KeyError) and isinstance(error, ConfigError)
    assert isinstance(error, UserError) and str(error) == "unknown model 'x'; valid names: a, b"
    exists = VersionExists(Path("models/m/1"))
    assert str(exists) == "models/m/1 already holds a model; export a new version or pass " \
                          "overwrite=True"
    assert exists.for_cli() == ("models/m/1 already holds a model; export a new version or "
                                "pass --overwrite")
