"""The reload generation that ``--workers N`` share, so a reload that reaches one worker reaches
them all (see :mod:`service.workers`).

One worker bumps a shared *generation* and reloads; every worker polls the generation
(:data:`POLL_S`) and reloads when it grows, then records the generation it has applied in a file
of its own; the worker that took the request answers once every live worker has applied it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("convserve.workers")

POLL_S = 0.1  # how often a worker looks for a reload another worker started


class WorkerSync:
    """The reload generation shared by the workers, and the one each has applied."""

    def __init__(self, directory: Path, pid: int | None = None) -> None:
        self.directory = directory
        self.pid = pid or os.getpid()
        self.applied_generation = -1
        directory.mkdir(parents=True, exist_ok=True)

    def _write(self, path: Path, value: int) -> None:
        temporary = path.with_name(f".{path.name}.{self.pid}")
        temporary.write_text(str(value))
        temporary.replace(path)  # readers see the old or the new number, never half

    @staticmethod
    def _read(path: Path) -> int:
        try:
            return int(path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def generation(self) -> int:
        """The newest reload any worker asked for."""
        return self._read(self.directory / "generation")

    def bump(self) -> int:
        """Ask every worker to reload; returns the new generation."""
        with (self.directory / "generation.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation = self.generation() + 1
            self._write(self.directory / "generation", generation)
        return generation

    def applied(self, generation: int) -> None:
        """Record that this worker serves what ``generation`` asked for."""
        self.applied_generation = max(self.applied_generation, generation)
        self._write(self.directory / f"worker-{self.pid}", self.applied_generation)

    def forget(self, pid: int) -> None:
        """Drop a dead worker's record (the supervisor calls this)."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"worker-{pid}").unlink()

    def lagging(self, generation: int) -> list[int]:
        """Live workers (other than this one) that have not applied ``generation`` yet.
        A worker still starting has no record yet: it loads the newest set anyway."""
        behind = []
        for path in self.directory.glob("worker-*"):
            pid = int(path.name.removeprefix("worker-"))
            if pid == self.pid or self._read(path) >= generation:
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            behind.append(pid)
        return behind

    async def wait_for(self, generation: int, timeout: float) -> list[int]:
        """Wait until every live worker has applied ``generation``; returns those that have not
        when ``timeout`` runs out (empty: all have)."""
        deadline = time.monotonic() + timeout
        while (behind := self.lagging(generation)) and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S / 2)
        return behind

    async def follow(self, reload: Callable[[], Awaitable[Any]]) -> None:
        """Reload whenever another worker bumps the generation (runs until cancelled). Nothing
        to do before the first load has recorded its generation: it rescans by itself."""
        while True:
            await asyncio.sleep(POLL_S)
            generation = self.generation()
            if self.applied_generation < 0 or generation <= self.applied_generation:
                continue
            try:
                await reload()
            except Exception:  # not retried until the next bump, as a failed POST is not
                logger.exception("reloading for generation %d failed", generation)
            self.applied(generation)
