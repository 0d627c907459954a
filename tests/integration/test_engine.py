"""The serving engine without any protocol: one default-version rule, one readiness answer, and a
version lifecycle that nothing outlives (issue: a late submit revived a retired version's lane)."""

from __future__ import annotations

import asyncio
import gc
import re
import shutil
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_models

from model_format import Capability
from service.engine import Engine
from service.errors import NotReady, UnsupportedTask, VersionNotFound
from service.settings import load_settings

_OTHERS: set[threading.Thread] = set()  # threads that are not this test's engine's


def _threads() -> list[str]:
    """This test's engine's threads, but the event loop's default executor's (which grows on
    demand and stays): other tests' apps may run in this process too."""
    return [t.name for t in threading.enumerate()
            if t not in _OTHERS and not t.name.startswith("asyncio_")]


def _lane_threads(key: str) -> list[str]:
    return [name for name in _threads() if name.startswith(f"infer-{key}-")]


def _series(engine: Engine, name: str, version: int) -> list[str]:
    """The exposition lines that carry ``name``'s ``version`` label."""
    text = engine.metrics.render().decode()
    return [line for line in text.splitlines()
            if f'model="{name}"' in line and f'version="{version}"' in line]


async def _started(models: Path, **overrides: object) -> Engine:
    _OTHERS.clear()
    _OTHERS.update(threading.enumerate())
    engine = Engine(load_settings(models_dir=models, providers="CPU", **overrides))
    await engine.start()
    for _ in range(600):
        if engine.readiness().ready:
            return engine
        await asyncio.sleep(0.05)
    raise AssertionError(f"not ready: {engine.readiness()}")


@pytest.fixture
def models(tiny_models: Path, tmp_path: Path) -> Path:
    return copy_models(tiny_models, tmp_path / "models")


def run(coroutine_function: Callable[[], object]) -> None:
    asyncio.run(coroutine_function())  # type: ignore[arg-type]


def test_a_late_submit_for_a_retired_version_revives_nothing(models: Path) -> None:
    """A request takes version 1, a reload removes it, then the request submits: a retryable
    503, and the version's threads, lane and metric series are gone for good."""

    async def scenario() -> None:
        engine = await _started(models)
        try:
            held = engine.get("tiny-rgb", 1)  # what a route holds for its whole request
            image = np.zeros((32, 32, 3), np.uint8)
            assert len(await engine.infer(held, [image])) == 1
            assert len(_lane_threads("tiny-rgb/1")) == engine.settings.instances
            assert _series(engine, "tiny-rgb", 1)
            before = len(_threads())
            shutil.rmtree(models / "tiny-rgb" / "1")
            result = await engine.reload()
            assert [v.key for v in result.removed] == ["tiny-rgb/1"]
            with pytest.raises(NotReady, match="no longer served") as refused:
                await engine.infer(held, [image])  # the late submit
            assert refused.value.status_code == 503
            assert refused.value.headers["Retry-After"] == "1"
            assert _lane_threads("tiny-rgb/1") == []
            assert len(_threads()) == before - engine.settings.instances
            assert _series(engine, "tiny-rgb", 1) == []  # info, ready, queue, inference...
            with pytest.raises(VersionNotFound):
                engine.get("tiny-rgb", 1)
            assert engine.get("tiny-rgb").version == 2  # the newest answers now
            retired = weakref.ref(held)
            del held, refused, result
            gc.collect()
            assert retired() is None  # its ONNX Runtime sessions went with it
        finally:
            await engine.close()

    run(scenario)


def test_repeated_reloads_with_requests_in_flight_keep_threads_flat(models: Path) -> None:
    """Each reload replaces a version while a request holds it and submits late: the thread
    count stays where it was (it grew by a lane per reload before)."""

    async def scenario() -> None:
        engine = await _started(models)
        try:
            image = np.zeros((32, 32, 3), np.uint8)
            baseline = len(_threads())
            card = models / "tiny-rgb" / "2" / "model.json"
            retired = []
            for _ in range(6):
                held = engine.get("tiny-rgb")
                card.write_text(card.read_text())  # a new stamp: the version is replaced
                await engine.reload()
                with pytest.raises(NotReady):
                    await engine.infer(held, [image])
                assert len(await engine.infer(engine.get("tiny-rgb"), [image])) == 1
                retired.append(weakref.ref(held))
                del held
            gc.collect()
            assert [ref() for ref in retired] == [None] * 6  # sessions and all: memory is back
            assert len(_threads()) == baseline
            assert len(_lane_threads("tiny-rgb/2")) == engine.settings.instances
        finally:
            await engine.close()

    run(scenario)


def test_one_default_rule_and_one_readiness_answer(models: Path) -> None:
    (models / "tiny-rgb" / "default_version").write_text("1\n")

    async def scenario() -> None:
        engine = await _started(models)
        try:
            assert engine.get("tiny-rgb").version == 1  # the pin, not the newest
            assert engine.default_version("tiny-rgb") == (1, True)
            assert engine.readiness().ready and engine.readiness().reason == ""
        finally:
            await engine.close()
        assert not engine.readiness().ready
        with pytest.raises(NotReady):
            engine.check_serving()

    run(scenario)


@pytest.mark.parametrize(("name", "need", "message"), [
    ("tiny-faces", Capability.CLASSIFY, "model 'tiny-faces' (face-detection) cannot classify"),
    ("tiny-rgb", Capability.EXPRESSIONS, "model 'tiny-rgb' (classification) is not an "
     "expression model"),
    ("tiny-rgb", Capability.DETECT_FACES, "model 'tiny-rgb' (classification) is not a face "
     "detector"),
    ("tiny-faces", Capability.EXPLAIN, "model 'tiny-faces' (face-detection) cannot explain"),
    ("tiny-faces", Capability.FIRST_LAYER, "model 'tiny-faces' (face-detection) has no first "
     "convolution"),
])
def test_a_model_that_cannot_do_it_gets_one_answer(models: Path, name: str, need: Capability,
                                                  message: str) -> None:
    async def scenario() -> None:
        engine = await _started(models)
        try:
            with pytest.raises(UnsupportedTask, match=re.escape(message)) as refused:
                engine.get(name, None, need)
            assert (refused.value.status_code, refused.value.code) == (422, "unsupported_task")
        finally:
            await engine.close()

    run(scenario)
