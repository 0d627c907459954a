"""``WorkerSync``: the reload generation the workers of ``serve --workers N`` share."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.settings import load_settings
from service.worker_sync import WorkerSync


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_bumps_from_many_writers_are_never_lost(tmp_path: Path) -> None:
    syncs = [WorkerSync(tmp_path, pid=1000 + i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: [s.bump() for _ in range(50)], syncs))
    assert syncs[0].generation() == 200


def test_lagging_lists_live_workers_behind_only(tmp_path: Path) -> None:
    here = WorkerSync(tmp_path)
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        other = WorkerSync(tmp_path, pid=sibling.pid)
        dead = WorkerSync(tmp_path, pid=_dead_pid())
        for sync in (here, other, dead):
            sync.applied(0)
        generation = here.bump()
        here.applied(generation)
        assert here.lagging(generation) == [sibling.pid]  # not itself, not the dead one
        assert asyncio.run(here.wait_for(generation, timeout=0.2)) == [sibling.pid]
        other.applied(generation)
        assert asyncio.run(here.wait_for(generation, timeout=5)) == []
        here.forget(sibling.pid)
        assert not (tmp_path / f"worker-{sibling.pid}").exists()
    finally:
        sibling.kill()
        sibling.wait()


def test_follow_reloads_once_per_new_generation(tmp_path: Path) -> None:
    follower, asker = WorkerSync(tmp_path, pid=1), WorkerSync(tmp_path, pid=2)
    follower.applied(0)
    reloads: list[int] = []

    async def scenario() -> None:
        async def reload() -> None:
            reloads.append(follower.generation())

        task = asyncio.create_task(follower.follow(reload))
        generation = asker.bump()
        assert await asker.wait_for(generation, timeout=5) == []  # pid 1 is not alive: no wait
        for _ in range(50):
            await asyncio.sleep(0.02)
            if follower.applied_generation == generation:
                break
        await asyncio.sleep(0.3)  # no further reloads for the same generation
        task.cancel()

    asyncio.run(scenario())
    assert reloads == [1] and follower.applied_generation == 1
    assert (tmp_path / "worker-1").read_text() == "1"


@pytest.mark.parametrize("workers", [1, 2])
def test_threads_default_to_each_workers_share_of_the_cores(
        workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    settings = load_settings(models_dir=tmp_path, providers="CPU", workers=workers)
    assert settings.decode_threads == 8 // workers
    assert settings.intra_threads == 8 // workers // settings.instances


def test_workers_setting_is_validated(tmp_path: Path) -> None:
    from service.errors import SettingsError

    with pytest.raises(SettingsError, match="CONVSERVE_WORKERS"):
        load_settings(models_dir=tmp_path, workers=0)
