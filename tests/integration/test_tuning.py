"""Per-host tuning (service/tuning.py, ``convserve tune``) on the shipped LeNet-5: measured once
per key and cached outside models/, reused, measured again when the key changes, a corrupt
cache ignored with a warning, and GET /v1/models saying which figures are in force."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient

import service.tuning
from service.model_version import load_version
from service.settings import Settings, load_settings
from service.tune import tune_repository
from tests.conftest import SHIPPED_MODELS

LENET = "mnist-lenet5"
MakeClient = Callable[..., AbstractContextManager[TestClient]]

pytestmark = pytest.mark.skipif(not (SHIPPED_MODELS / LENET / "1" / "model.onnx").is_file(),
                                reason="the shipped mnist-lenet5 is missing")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A models/ tree holding only a copy of the shipped LeNet-5 (with its serving.json)."""
    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / LENET / "1", root / LENET / "1")
    return root


def settings_for(models: Path, tuning: Path, **overrides: object) -> Settings:
    return load_settings(models_dir=models, tuning_dir=tuning, providers="CPU", **overrides)


def tune(settings: Settings) -> bool:
    """Tune LeNet-5 quickly; True when it was measured, False when the cache answered."""
    outcomes, failed = tune_repository(settings, seconds=0.02)
    assert not failed and [o.key for o in outcomes] == [f"{LENET}/1"]
    return outcomes[0].measured


def test_measured_once_per_key_and_again_when_the_key_changes(
        models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tuning = tmp_path / "tuning"
    settings = settings_for(models, tuning)
    assert tune(settings) is True
    files = sorted(tuning.iterdir())
    assert len(files) == 1 and files[0].name.startswith(f"{LENET}-1-")
    figures = json.loads(files[0].read_text())
    assert figures["key"]["onnxruntime"] == service.tuning.ORT_VERSION
    assert set(figures["batch_costs_ms"]) == {"1", "2", "4"}
    assert figures["max_batch_size"] in (1, 2, 4)
    assert tune(settings) is False  # the same host: the cache answers
    # Another core count (CONVSERVE_CPUS) is another key: measured again, in a file of its own.
    assert tune(settings_for(models, tuning, cpus=1)) is True
    assert len(list(tuning.iterdir())) == 2
    # Another onnxruntime: measured again.
    monkeypatch.setattr(service.tuning, "ORT_VERSION", "0.0.0-other")
    assert tune(settings) is True
    monkeypatch.undo()
    # A re-exported graph (other bytes, other sha256): measured again.
    graph = models / LENET / "1" / "model.onnx"
    model = onnx.load(graph)
    model.doc_string = "exported again"
    onnx.save(model, graph)
    assert tune(settings) is True
    assert len(list(tuning.iterdir())) == 4


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}


def test_a_read_only_models_dir_still_works(models: Path, tmp_path: Path) -> None:
    before = snapshot(models)
    for path in [*models.rglob("*"), models]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        settings = settings_for(models, tmp_path / "cache" / "tuning")
        assert tune(settings) is True
        version = load_version(LENET, 1, models / LENET / "1", settings)
        assert version.batching is not None and version.batching.source == "host cache"
        assert snapshot(models) == before  # nothing written under models/
        assert len(list((tmp_path / "cache" / "tuning").iterdir())) == 1
    finally:
        for path in [models, *models.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_a_corrupt_cache_is_ignored_with_a_warning(
        models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(models, tmp_path / "tuning")
    assert tune(settings) is True
    (cached,) = (tmp_path / "tuning").iterdir()
    cached.write_text('{"key": {"device": "half a fi')
    with caplog.at_level(logging.WARNING, logger="convserve.tuning"):
        version = load_version(LENET, 1, models / LENET / "1", settings)
    assert version.batching is not None and version.batching.source == "serving.json"
    shipped = json.loads((models / LENET / "1" / "serving.json").read_text())
    assert version.max_batch == shipped["cpu_max_batch_size"]
    assert any(str(cached) in r.getMessage() and "ignored" in r.getMessage()
               for r in caplog.records)
    assert tune(settings) is True  # convserve tune writes it again
    assert json.loads(cached.read_text())["key"]["graph_sha256"]


def test_models_endpoint_shows_the_figures_in_force_and_their_source(
        models: Path, tmp_path: Path, make_client: MakeClient) -> None:
    shutil.copytree(models / LENET, models / "bare-lenet5")
    os.remove(models / "bare-lenet5" / "1" / "serving.json")
    tuning = tmp_path / "tuning"

    def batching(client: TestClient, name: str) -> dict:
        return client.get(f"/v1/models/{name}").json()["versions"][0]["batching"]

    with make_client(models, tuning_dir=tuning) as client:
        shipped = batching(client, LENET)
        assert shipped["source"] == "serving.json"
        assert shipped["file"] == str(models / LENET / "1" / "serving.json")
        assert shipped["key"]["provider"] == "CPUExecutionProvider"
        bare = batching(client, "bare-lenet5")
        assert bare["source"] == "default" and bare["max_batch_size"] == 4
    outcomes, _ = tune_repository(settings_for(models, tuning), only=LENET, seconds=0.02)
    with make_client(models, tuning_dir=tuning) as client:
        tuned = batching(client, LENET)
        figures = outcomes[0].figures
        assert tuned["source"] == "host cache" and tuned["file"] == str(outcomes[0].file)
        assert tuned["max_batch_size"] == figures.max_batch_size
        assert tuned["batch_costs_ms"] == {str(k): v for k, v in figures.batch_costs_ms.items()}
        assert figures.threads is not None
        assert tuned["latency_threads"] == figures.threads.latency_threads
        assert tuned["measured"]["command"] == "convserve tune"
        assert batching(client, "bare-lenet5")["source"] == "default"  # not tuned (--only)
        digit = (SHIPPED_MODELS.parent / "samples" / "digit.png").read_bytes()
        answer = client.post(f"/v1/models/{LENET}/classify",
                             files={"file": ("digit.png", digit, "image/png")})
        assert answer.status_code == 200, answer.text


def test_convserve_tune_command(models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import main

    # The CPU, as everywhere here (the default list would also settle, once per process,
    # whether CUDA is left out: other tests check that decision).
    monkeypatch.setenv("CONVSERVE_PROVIDERS", "CPU")

    argv = ["tune", "--models", str(models), "--tuning-dir", str(tmp_path / "t"),
            "--seconds", "0.02"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith(f"{LENET}/1: measured; batch cap ") and str(tmp_path / "t") in first
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"{LENET}/1: cached; ")
    assert main([*argv, "--only", "no-such-model"]) == 1
    assert "no classifier named 'no-such-model'" in capsys.readouterr().err
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    assert main(["tune", "--models", str(models), "--tuning-dir", str(blocked / "tuning"),
                 "--seconds", "0.02"]) == 2
    assert "cannot write the tuning cache" in capsys.readouterr().err


def test_untuned_short_graphs_run_lone_requests_without_the_solo_session(
        models: Path, tmp_path: Path) -> None:
    """Without host figures a graph whose run takes under SHORT_RUN_MS (LeNet-5: ~0.02 ms) runs
    a lone request on its instance's own thread, and says so; a real one keeps every core."""
    mobilenet = SHIPPED_MODELS / "imagenet-mobilenetv2" / "1"
    if not (mobilenet / "model.onnx").is_file():
        pytest.skip("the shipped imagenet-mobilenetv2 is missing")
    shutil.copytree(mobilenet, models / "imagenet-mobilenetv2" / "1")
    settings = settings_for(models, tmp_path / "tuning", cpus=2, instances=2)
    lenet = load_version(LENET, 1, models / LENET / "1", settings)
    assert lenet.batching is not None and lenet.batching.source == "serving.json"
    assert lenet.batching.latency_threads == settings.intra_threads == 1
    assert lenet.sessions["model"].solo is None
    big = load_version("imagenet-mobilenetv2", 1, models / "imagenet-mobilenetv2" / "1", settings)
    assert big.batching is not None and big.batching.latency_threads is None
    solo = big.sessions["model"].solo
    assert solo is not None and solo.get_session_options().intra_op_num_threads == 2
