"""``convserve serve --workers N``: N processes serving one port.

The parent binds the socket and runs uvicorn's multiprocess supervisor (:class:`Supervisor`);
each worker is a spawned process that builds its own app (:func:`create_worker_app`): its own
event loop, decode pool, batcher and ONNX Runtime sessions (on a GPU, N sessions on one device).
The kernel hands each new connection to one worker. The supervisor replaces a worker that dies,
and logs it; SIGTERM to the parent reaches every worker, and each drains as one process does.

What the workers share lives in one run directory the parent creates empty (and removes):

* ``metrics/``: prometheus-client's multiprocess files (see :mod:`service.metrics`);
* ``sync/``: :class:`WorkerSync`, so that ``POST /v1/repository/reload``, which reaches one
  worker, reaches them all. That worker bumps a shared *generation* and reloads; every worker
  polls the generation (:data:`POLL_S`) and reloads when it grows, then records the generation it
  has applied in a file of its own; the first worker answers once every live worker has applied
  it. A worker still starting scans again until no bump happened during its scan, so it never
  turns ready with an older set.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from service.connections import WORKER_PROTOCOL, uvicorn_options
from service.settings import ENV_PREFIX, Settings

logger = logging.getLogger("convserve.workers")

RUN_DIR_ENV = f"{ENV_PREFIX}RUN_DIR"  # set by the supervisor for its workers, not by users
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
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


def create_worker_app() -> FastAPI:
    """The app of one worker (uvicorn's factory): settings from the environment the supervisor
    set, logs written from a thread, the shared :class:`WorkerSync`."""
    from service.app import create_app
    from service.cli import configure_logging
    from service.settings import load_settings

    settings = load_settings()
    flush_logs = configure_logging(settings.log_level, background=True, process=True)
    app = create_app(settings)
    app.state.sync = WorkerSync(Path(os.environ[RUN_DIR_ENV]) / "sync")
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        try:
            async with inner(app) as state:
                yield state
        finally:  # uvicorn re-raises SIGTERM once shut down, which skips atexit
            flush_logs()

    app.router.lifespan_context = lifespan
    return app


class Supervisor(Multiprocess):
    """uvicorn's supervisor (it replaces a dead worker), which also logs the replacement and
    clears the dead worker's metrics and reload records."""

    sync: WorkerSync

    def keep_subprocess_alive(self) -> None:
        before = list(self.processes)
        super().keep_subprocess_alive()
        for old, new in zip(before, self.processes, strict=False):
            if old is new or old.pid is None:
                continue
            multiprocess.mark_process_dead(old.pid)
            self.sync.forget(old.pid)
            logger.error("worker %d died (exit code %s); worker %s replaces it and answers 503 "
                         "until its models are warm", old.pid, old.exitcode, new.pid)


def serve(settings: Settings, overrides: dict[str, Any]) -> int:
    """Run ``settings.workers`` workers on one socket until SIGTERM or SIGINT.

    Args:
        settings: The validated settings (the parent's; each worker reads its own).
        overrides: Settings given on the command line: exported to the workers' environment.

    Returns:
        The exit status: 0, or 3 when a worker failed to start (as uvicorn does).
    """
    run_dir = Path(tempfile.mkdtemp(prefix="convserve-"))
    for key, value in overrides.items():
        os.environ[f"{ENV_PREFIX}{key.upper()}"] = str(value)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    os.environ[METRICS_ENV] = str(run_dir / "metrics")
    (run_dir / "metrics").mkdir()
    config = uvicorn.Config("service.workers:create_worker_app", factory=True,
                            workers=settings.workers,
                            **uvicorn_options(settings, WORKER_PROTOCOL))
    supervisor = Supervisor(config, sockets=[config.bind_socket()])
    supervisor.sync = WorkerSync(run_dir / "sync")
    logger.info("starting %d workers on %s:%d", settings.workers, settings.host, settings.port)
    try:
        supervisor.run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
    return 3 if failed else 0
