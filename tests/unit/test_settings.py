"""service.settings: defaults, environment parsing, and start-up errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from service.errors import SettingsError
from service.runtime import session_options
from service.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CONVSERVE_") and name != "CONVSERVE_CACHE":
            monkeypatch.delenv(name)


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(models_dir=tmp_path)
    assert settings.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings.max_batch_size == 4 and settings.max_queue_delay_ms == 0  # as documented
    assert settings.api_key is None and settings.port == 8000
    assert settings.decode_threads >= 1


def test_intra_op_threads_default_to_the_cores_over_the_instances(tmp_path: Path) -> None:
    import os

    cores = os.cpu_count() or 1
    assert Settings(models_dir=tmp_path, instances=2).intra_threads == max(1, cores // 2)
    assert Settings(models_dir=tmp_path, instances=cores + 1).intra_threads == 1
    assert Settings(models_dir=tmp_path, instances=2, intra_op_threads=3).intra_threads == 3
    assert session_options(Settings(models_dir=tmp_path, instances=cores)).intra_op_num_threads \
        == 1


def test_environment_with_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("CONVSERVE_PROVIDERS", "cpu")
    monkeypatch.setenv("CONVSERVE_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("CONVSERVE_API_KEY", "k")
    monkeypatch.setenv("CONVSERVE_INTRA_OP_THREADS", "2")
    settings = load_settings()
    assert settings.models_dir == tmp_path and settings.max_batch_size == 4
    assert settings.providers == ["CPUExecutionProvider"]
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"
    assert "k" not in repr(settings.api_key)
    assert load_settings(max_batch_size=9).max_batch_size == 9  # explicit values win


@pytest.mark.parametrize(("value", "expected"), [
    ("CUDA, CPU", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ('["TensorrtExecutionProvider", "cpu"]', ["TensorrtExecutionProvider",
                                              "CPUExecutionProvider"]),
    ("cpu,CPU", ["CPUExecutionProvider"]),
])
def test_provider_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str,
                        expected: list[str]) -> None:
    monkeypatch.setenv("CONVSERVE_PROVIDERS", value)
    assert load_settings(models_dir=tmp_path).providers == expected


def test_empty_api_key_means_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_API_KEY", "")
    assert load_settings(models_dir=tmp_path).api_key is None


@pytest.mark.parametrize(("override", "message"), [
    ({"max_batch_size": 0}, "CONVSERVE_MAX_BATCH_SIZE: Input should be greater than or equal to 1"),
    ({"max_queue_delay_ms": -1}, "CONVSERVE_MAX_QUEUE_DELAY_MS: Input should be greater than"),
    ({"max_queue_size": 0}, "CONVSERVE_MAX_QUEUE_SIZE: Input should be greater than 0"),
    ({"max_body_bytes": 0}, "CONVSERVE_MAX_BODY_BYTES: Input should be greater than 0"),
    ({"max_image_pixels": -5}, "CONVSERVE_MAX_IMAGE_PIXELS"),
    ({"port": 70000}, "CONVSERVE_PORT: Input should be less than or equal to 65535"),
    ({"providers": "CUDA,GPU"}, "CONVSERVE_PROVIDERS: unknown execution provider 'GPU'"),
    ({"providers": ""}, "CONVSERVE_PROVIDERS: list at least one execution provider"),
    ({"graph_optimization": "max"}, "CONVSERVE_GRAPH_OPTIMIZATION"),
    ({"models_dir": "/no/such/dir"}, "CONVSERVE_MODELS_DIR: '/no/such/dir' is not a directory"),
])
def test_invalid_settings_say_what_to_fix(tmp_path: Path, override: dict,
                                          message: str) -> None:
    with pytest.raises(SettingsError, match="invalid settings") as caught:
        load_settings(**({"models_dir": tmp_path} | override))
    assert message in str(caught.value)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(models_dir="/no/such/dir", max_batch_size=0, port=0)
    assert str(caught.value).count("CONVSERVE_") >= 3


def test_session_options_follow_the_settings(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path, intra_op_threads=3, inter_op_threads=1,
                        graph_optimization="basic")
    options = session_options(settings)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_options(Settings(models_dir=tmp_path, allow_spinning=True))
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_a_solo_session_uses_every_core_when_instances_share_them(tiny_models: Path) -> None:
    import os

    import numpy as np

    from service.runtime import create_session

    graph = tiny_models / "tiny-rgb" / "1" / "model.onnx"
    cores = os.cpu_count() or 1
    shared = create_session(graph, Settings(models_dir=tiny_models, providers="CPU",
                                            instances=cores * 2))
    whole = create_session(graph, Settings(models_dir=tiny_models, providers="CPU",
                                           instances=1))
    assert whole.solo is None  # one instance already has every core
    feed = {"image": np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), np.uint8)}
    if cores > 1:
        assert shared.solo is not None
        np.testing.assert_allclose(shared.run(feed, alone=True)[0], shared.run(feed)[0],
                                   rtol=1e-5, atol=1e-6)


def _spins(session: ort.InferenceSession) -> tuple[str, str]:
    """(allow_spinning, force_spinning_stop or "" where unset) of a session."""
    options = session.get_session_options()
    try:
        stop = options.get_session_config_entry("session.force_spinning_stop")
    except RuntimeError:  # not set
        stop = ""
    return options.get_session_config_entry("session.intra_op.allow_spinning"), stop


def test_only_a_classifiers_solo_session_spins_and_only_within_runs(
        tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone classification run spins its threads and stops when it returns (MobileNetV2 on 2
    cores: 1-client p50 4.76 ms against 6.50, same at 4 and 32 clients); detectors' lone runs
    share the cores with other requests' work and do not spin (15% of expressions throughput)."""
    import os

    from service.model_version import load_version

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no solo session")
    # The tiny graphs run in microseconds: keep their solo sessions (SHORT_RUN_MS) to see them.
    monkeypatch.setattr("service.model_version.SHORT_RUN_MS", 0.0)
    settings = Settings(models_dir=tiny_models, providers="CPU", instances=2)
    classifier = load_version("tiny-rgb", 1, tiny_models / "tiny-rgb" / "1", settings).session
    detector = load_version("tiny-faces", 1, tiny_models / "tiny-faces" / "1", settings)
    assert classifier.solo is not None
    assert _spins(classifier.solo) == ("1", "1")
    assert _spins(classifier.inner) == ("0", "")
    for session in detector.sessions.values():
        assert session.solo is not None and _spins(session.solo) == ("0", "")


def test_in_flight_says_which_run_is_alone() -> None:
    from service.runtime import InFlight

    runs = InFlight()
    with runs as first:
        with runs as second:
            assert first and not second
    with runs as later:
        assert later  # the others have finished


def test_run_picks_the_solo_session_only_for_a_lone_run(tiny_models: Path) -> None:
    import dataclasses

    import numpy as np

    from service.runtime import create_session

    graph = tiny_models / "tiny-rgb" / "1" / "model.onnx"
    session = create_session(graph, Settings(models_dir=tiny_models, providers="CPU",
                                             instances=1, intra_op_threads=1))
    used: list[str] = []

    class Recording:
        def __init__(self, name: str) -> None:
            self.name = name

        def run(self, outputs: object, inputs: dict) -> list[np.ndarray]:
            used.append(self.name)
            return session.inner.run(outputs, inputs)  # type: ignore[arg-type]

    both = dataclasses.replace(session, inner=Recording("shared"), solo=Recording("solo"))
    feed = {"image": np.zeros((1, 32, 32, 3), np.uint8)}
    both.run(feed, alone=True)
    both.run(feed, alone=False)
    both.run(feed)  # nothing else in flight: solo
    with both.in_flight:  # another run in flight: shared
        both.run(feed)
    assert used == ["solo", "shared", "solo", "shared"]


def test_cpus_sizes_the_threads_and_the_solo_session(tiny_models: Path) -> None:
    """In a pod ``os.cpu_count()`` is the node's: ``CONVSERVE_CPUS`` (the CPU request) wins."""
    from service.runtime import create_session

    settings = Settings(models_dir=tiny_models, providers="CPU", cpus=3, instances=3)
    assert (settings.cores, settings.intra_threads, settings.decode_threads) == (3, 1, 3)
    assert Settings(models_dir=tiny_models, cpus=3, decode_workers=5).decode_threads == 5
    session = create_session(tiny_models / "tiny-rgb" / "1" / "model.onnx", settings)
    assert session.inner.get_session_options().intra_op_num_threads == 1
    assert session.solo is not None
    assert session.solo.get_session_options().intra_op_num_threads == 3
    alone = create_session(tiny_models / "tiny-rgb" / "1" / "model.onnx",
                           Settings(models_dir=tiny_models, providers="CPU", cpus=1))
    assert alone.solo is None  # one core: the instances' sessions already have it
