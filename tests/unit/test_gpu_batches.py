"""How batches are sized: padded sizes, a session per size and per-thread warm-up off the CPU
(checked on the CPU), detectors on the CPU, the batch size with the cheapest image on the CPU,
and the CUDA provider's options."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_format import SERVING_FILE
from service.batch_sizes import cheapest_batch, main, measure
from service.errors import SettingsError
from service.model_version import ModelVersion, gpu_batch_sizes, load_version
from service.runtime import padded_batch_sizes, provider_options
from service.settings import load_settings


@dataclasses.dataclass
class SpySession:
    """Records each run's batch size and thread, then runs the real session."""

    real: Any
    provider: str = "CUDAExecutionProvider"
    runs: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None, *,
            alone: bool | None = None) -> list[np.ndarray]:
        self.runs.append((len(next(iter(inputs.values()))), threading.current_thread().name))
        return self.real.run(inputs, outputs, alone=alone)


def _tiny(tiny_models: Path) -> ModelVersion:
    settings = load_settings(models_dir=tiny_models, providers="CPU", max_batch_size=4)
    return load_version("tiny-rgb", 1, tiny_models / "tiny-rgb" / "1", settings)


def _with_spy(version: ModelVersion, sizes: tuple[int, ...]) -> tuple[ModelVersion, SpySession]:
    spy = SpySession(version.session)
    return dataclasses.replace(version, sessions={"model": spy}, batch_sizes=sizes), spy  # type: ignore[dict-item]


@pytest.mark.parametrize(("largest", "sizes"), [
    (1, (1,)), (2, (1, 2)), (6, (1, 2, 4, 6)), (32, (1, 2, 4, 8, 16, 32))])
def test_padded_batch_sizes(largest: int, sizes: tuple[int, ...]) -> None:
    assert padded_batch_sizes(largest) == sizes


def test_only_sessions_off_the_cpu_pad(tiny_models: Path) -> None:
    version = _tiny(tiny_models)
    settings = load_settings(models_dir=tiny_models, providers="CPU", max_batch_size=8)
    assert version.batch_sizes == ()
    assert gpu_batch_sizes(version.sessions, settings) == ()
    assert gpu_batch_sizes({"model": SpySession(None)}, settings) == (1, 2, 4, 8)  # type: ignore[dict-item]


def test_infer_pads_to_a_batch_size_and_returns_only_the_real_rows(tiny_models: Path) -> None:
    version = _tiny(tiny_models)
    padded, spy = _with_spy(version, (1, 2, 4))
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for rows, ran in [(3, 4), (2, 2), (5, 5)]:  # beyond the largest size: run as it is
        out = padded.infer(images[:rows])
        assert spy.runs[-1][0] == ran
        np.testing.assert_allclose(out, version.infer(images[:rows]), rtol=1e-6, atol=1e-7)


def test_each_padded_size_runs_on_a_session_of_its_own(tiny_models: Path) -> None:
    """A CUDA session re-plans its convolutions whenever its input shape changes (711 ms per
    run on an H200 when sizes alternate), so each padded size gets its own session."""
    version = _tiny(tiny_models)
    settings = load_settings(models_dir=tiny_models, providers="CPU")
    split = version.session.with_batch_sessions((1, 2, 4), settings)
    assert sorted(split.by_batch) == [1, 2, 4] and split.by_batch[1] is version.session.inner
    assert len({id(session) for session in split.by_batch.values()}) == 3
    ran: list[int] = []

    class Counting:  # an ORT session that records which size it was
        def __init__(self, size: int) -> None:
            self.size = size

        def run(self, outputs: Any, feed: dict[str, np.ndarray]) -> Any:
            ran.append(self.size)
            return split.by_batch[self.size].run(outputs, feed)

    routed = dataclasses.replace(split, by_batch={size: Counting(size) for size in (1, 2, 4)})
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for rows in (2, 4, 1, 2):
        routed.run({"image": images[:rows]}, ["probabilities"])
    assert ran == [2, 4, 1, 2]
    for rows in (1, 2, 4):
        np.testing.assert_allclose(split.run({"image": images[:rows]}, ["probabilities"])[0],
                                   version.infer(images[:rows]), rtol=1e-6, atol=1e-7)


def test_detectors_ask_for_the_cpu_alone(tiny_models: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """MTCNN's pyramid gives every run a new shape: on a GPU each would be re-planned."""
    from service import runtime

    asked: list[list[Any]] = []
    real = runtime.ort.InferenceSession

    def recording(path: str, options: Any, providers: list[Any]) -> Any:
        asked.append(providers)
        return real(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(runtime, "_UNLOADABLE", set())
    monkeypatch.setattr(runtime.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(runtime.ort, "InferenceSession", recording)
    settings = load_settings(models_dir=tiny_models, providers="CUDA,CPU", warmup=False)
    load_version("tiny-faces", 1, tiny_models / "tiny-faces" / "1", settings)
    assert asked and all(providers == ["CPUExecutionProvider"] for providers in asked)
    detector_sessions = len(asked)
    load_version("tiny-rgb", 1, tiny_models / "tiny-rgb" / "1", settings)
    assert asked[detector_sessions][0][0] == "CUDAExecutionProvider"  # the configured order


def test_warm_up_thread_runs_each_batch_size_on_the_calling_thread(tiny_models: Path) -> None:
    padded, spy = _with_spy(_tiny(tiny_models), (1, 2, 4))
    thread = threading.Thread(target=padded.warm_up_thread, name="infer-test")
    thread.start()
    thread.join()
    assert spy.runs == [(1, "infer-test"), (2, "infer-test"), (4, "infer-test")]
    on_cpu, spy = _with_spy(_tiny(tiny_models), ())
    on_cpu.warm_up_thread()
    assert spy.runs == []


def test_cuda_gets_the_conv_algorithm_search_setting(tmp_path: Path) -> None:
    settings = load_settings(models_dir=tmp_path, cuda_conv_algo_search="exhaustive")
    assert provider_options(["CUDAExecutionProvider", "CPUExecutionProvider"], settings) == [
        ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"}),
        "CPUExecutionProvider"]
    assert load_settings(models_dir=tmp_path).cuda_conv_algo_search == "heuristic"
    with pytest.raises(SettingsError, match="CONVSERVE_CUDA_CONV_ALGO_SEARCH"):
        load_settings(models_dir=tmp_path, cuda_conv_algo_search="fastest")


def test_a_provider_that_fails_to_load_is_tried_once_and_quietly(
        tiny_models: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    """Where CUDA cannot load (no GPU libraries), ONNX Runtime logs two lines for every session
    that asks for it; the service asks once, silences those, and says why in its own warning."""
    from service import runtime

    monkeypatch.setattr(runtime, "_UNLOADABLE", set())
    settings = load_settings(models_dir=tiny_models, providers="CUDA,CPU")
    graph = tiny_models / "tiny-rgb" / "1" / "model.onnx"
    sessions = [runtime.create_session(graph, settings) for _ in range(3)]
    if sessions[0].provider == "CUDAExecutionProvider":
        pytest.skip("CUDA loads on this machine")
    assert runtime._UNLOADABLE == {"CUDAExecutionProvider"}
    assert "CUDAExecutionProvider" not in capfd.readouterr().err
    reason = runtime.provider_load_error("CUDAExecutionProvider")
    assert reason and ".so" in reason  # the library that is missing, e.g. libcublasLt.so.13


@pytest.mark.parametrize(("costs", "chosen"), [
    ({1: 3.96, 2: 3.91, 4: 3.98}, 2),  # MobileNetV2 on this machine: 4 is not cheaper
    ({1: 6.75, 2: 7.04, 4: 7.94}, 1),  # EfficientNet-Lite0
    ({1: 9.8, 2: 8.9, 4: 8.1}, 4),  # a model whose weights dominate (ResNet-18)
    ({1: 0.2, 2: 0.2, 4: 0.2}, 4),  # a tie: the larger batch saves hand-offs
    ({1: 0.200, 2: 0.190, 4: 0.195}, 4),  # cheap models: the run overhead decides
])
def test_cheapest_batch(costs: dict[int, float], chosen: int) -> None:
    assert cheapest_batch(costs) == chosen


def test_the_cpu_batch_size_is_measured_once_and_read_at_every_load(
        tiny_models: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "tiny-rgb", models / "tiny-rgb")
    settings = load_settings(models_dir=models, providers="CPU", max_batch_size=4)
    directory = models / "tiny-rgb" / "1"
    unmeasured = load_version("tiny-rgb", 1, directory, settings)
    assert (unmeasured.max_batch, unmeasured.batch_costs) == (4, {})  # no serving.json
    hints = measure(unmeasured, 4, rounds=3)
    assert sorted(hints.cpu_batch_costs_ms) == [1, 2, 4]
    assert all(cost > 0 for cost in hints.cpu_batch_costs_ms.values())
    assert hints.cpu_max_batch_size == cheapest_batch(hints.cpu_batch_costs_ms)
    assert main(["--models", str(models), "--only", "tiny-rgb", "--write"]) == 0
    written = json.loads((directory / SERVING_FILE).read_text())
    loads = [load_version("tiny-rgb", 1, directory, settings) for _ in range(3)]
    assert {v.max_batch for v in loads} == {written["cpu_max_batch_size"]}  # the same each load
    (directory / SERVING_FILE).write_text(json.dumps({"cpu_max_batch_size": 3}))
    capped = load_settings(models_dir=models, providers="CPU", max_batch_size=2)
    assert load_version("tiny-rgb", 1, directory, capped).max_batch == 2  # the setting caps it
    (directory / SERVING_FILE).write_text(json.dumps({"cpu_max_batch_size": 0}))
    with pytest.raises(ValueError, match=r"serving.json: cpu_max_batch_size: Input should be "
                                         r"greater than 0"):
        load_version("tiny-rgb", 1, directory, settings)
