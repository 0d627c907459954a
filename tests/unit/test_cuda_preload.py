"""CUDA from wheels: the NVIDIA driver check, the preload before the first session, and what
the log says on a host without a driver (INFO) or where an asked-for CUDA did not load (WARNING).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service import runtime
from service.settings import load_settings

CUDA = "CUDAExecutionProvider"


@pytest.fixture
def fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has not prepared CUDA yet."""
    monkeypatch.setattr(runtime, "_cuda_prepared", False)
    monkeypatch.setattr(runtime, "_UNLOADABLE", set())
    monkeypatch.setattr(runtime, "_LEFT_OUT", set())


def test_driver_found_by_its_proc_entry_or_its_library(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    assert runtime.nvidia_driver_present(tmp_path, "libno-such-library.so.1")  # /proc entry
    assert runtime.nvidia_driver_present(missing, "libc.so.6")  # a library that loads
    assert not runtime.nvidia_driver_present(missing, "libno-such-library.so.1")


def test_this_host_has_no_driver() -> None:
    """The machine CI runs on has no NVIDIA driver: the INFO path below is the one it takes."""
    if runtime.NVIDIA_PROC.exists():
        pytest.skip("this host has an NVIDIA driver")
    assert not runtime.nvidia_driver_present()


def _session(tiny_models: Path, **settings: str) -> runtime.Session:
    config = load_settings(models_dir=tiny_models, **settings)
    return runtime.create_session(tiny_models / "tiny-rgb" / "1" / "model.onnx", config)


@pytest.mark.usefixtures("fresh_runtime")
def test_no_driver_and_default_providers_is_one_info_line(
        tiny_models: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        ) -> None:
    monkeypatch.delenv("CONVSERVE_PROVIDERS", raising=False)
    monkeypatch.setattr(runtime, "nvidia_driver_present", lambda: False)
    monkeypatch.setattr(runtime.ort, "get_available_providers",
                        lambda: [CUDA, "CPUExecutionProvider"])
    preloaded: list[bool] = []
    monkeypatch.setattr(runtime, "preload_cuda_libraries", lambda: preloaded.append(True) or [])
    with caplog.at_level(logging.INFO, logger="convserve.runtime"):
        sessions = [_session(tiny_models) for _ in range(2)]
        missing = runtime.warn_missing_providers([CUDA, "CPUExecutionProvider"],
                                                 {"CPUExecutionProvider"})
    assert [s.provider for s in sessions] == ["CPUExecutionProvider"] * 2
    assert missing == [] and not preloaded
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [("INFO", "no NVIDIA driver on this host (no /proc/driver/nvidia, no "
                                "libcuda.so.1): running on the CPU")]


@pytest.mark.usefixtures("fresh_runtime")
def test_cpu_only_onnxruntime_and_default_providers_is_one_info_line(
        tiny_models: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        ) -> None:
    monkeypatch.delenv("CONVSERVE_PROVIDERS", raising=False)
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="convserve.runtime"):
        assert _session(tiny_models).provider == "CPUExecutionProvider"
        assert runtime.warn_missing_providers([CUDA], {"CPUExecutionProvider"}) == []
    assert [r.getMessage() for r in caplog.records] == [
        "this onnxruntime has no CUDA provider (the serve-cpu install): running on the CPU"]


@pytest.mark.usefixtures("fresh_runtime")
def test_cuda_asked_for_explicitly_is_tried_and_warned_about(
        tiny_models: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        ) -> None:
    """Without a driver, CUDA asked for by name is still loaded and tried: the warning names
    what failed (the driver's library: every other one comes from the wheels)."""
    if CUDA not in runtime.ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider")
    monkeypatch.setattr(runtime, "nvidia_driver_present", lambda: False)
    real, preloaded = runtime.preload_cuda_libraries, []
    monkeypatch.setattr(runtime, "preload_cuda_libraries",
                        lambda: preloaded.append(True) or real())
    with caplog.at_level(logging.INFO, logger="convserve.runtime"):
        session = _session(tiny_models, providers="CUDA,CPU")
        assert preloaded == [True]  # so the failure names the driver, not a wheel's library
        if session.provider == CUDA:
            pytest.skip("CUDA loads on this machine")
        assert runtime.warn_missing_providers([CUDA], {"CPUExecutionProvider"}) == [CUDA]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "(libcuda.so.1: cannot open shared object file" in caplog.records[0].getMessage()


def test_a_cpu_only_onnxruntime_says_which_install_has_cuda(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime, "_LEFT_OUT", set())
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(runtime, "provider_load_error", lambda provider: None)
    with caplog.at_level(logging.WARNING, logger="convserve.runtime"):
        assert runtime.warn_missing_providers([CUDA], {"CPUExecutionProvider"}) == [CUDA]
    assert ("(this onnxruntime has no such provider: for CUDA, install '.[serve]')"
            in caplog.records[0].getMessage())


@pytest.mark.usefixtures("fresh_runtime")
def test_a_driver_means_the_wheels_libraries_are_preloaded_once(
        tiny_models: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        ) -> None:
    monkeypatch.delenv("CONVSERVE_PROVIDERS", raising=False)
    monkeypatch.setattr(runtime, "nvidia_driver_present", lambda: True)
    monkeypatch.setattr(runtime.ort, "get_available_providers",
                        lambda: [CUDA, "CPUExecutionProvider"])
    preloaded: list[bool] = []
    monkeypatch.setattr(runtime, "preload_cuda_libraries", lambda: preloaded.append(True) or [])
    with caplog.at_level(logging.INFO, logger="convserve.runtime"):
        for _ in range(2):
            _session(tiny_models)
    assert preloaded == [True]  # before the first session, once
    assert runtime._LEFT_OUT == set()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


@pytest.mark.usefixtures("fresh_runtime")
def test_cpu_settings_need_no_cuda_at_all(tiny_models: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime, "preload_cuda_libraries", lambda: pytest.fail("preloaded"))
    with caplog.at_level(logging.INFO, logger="convserve.runtime"):
        assert _session(tiny_models, providers="CPU").provider == "CPUExecutionProvider"
    assert caplog.records == []


def test_preload_reports_what_onnxruntime_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    def preload_dlls() -> None:
        print("Failed to load libcudnn.so.9: cannot open shared object file")  # noqa: T201

    monkeypatch.setattr(runtime.ort, "preload_dlls", preload_dlls, raising=False)
    assert runtime.preload_cuda_libraries() == [
        "Failed to load libcudnn.so.9: cannot open shared object file"]
