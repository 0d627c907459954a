"""``convserve serve --workers N``: N processes serving one port.

The parent binds the socket and runs uvicorn's multiprocess supervisor (:class:`Supervisor`);
each worker is a spawned process that builds its own app (:func:`create_worker_app`): its own
event loop, decode pool, batcher and ONNX Runtime sessions (on a GPU, N sessions on one device).
The kernel hands each new connection to one worker. The supervisor replaces a worker that dies,
and logs it; SIGTERM to the parent reaches every worker, and each drains as one process does.

What the workers share lives in one run directory the parent creates empty (and removes):

* ``metrics/``: prometheus-client's multiprocess files (see :mod:`service.metrics`);
* ``sync/``: :class:`service.worker_sync.WorkerSync`, so that ``POST /v1/repository/reload``,
  which reaches one worker, reaches them all. A worker still starting scans again until no bump
  happened during its scan, so it never turns ready with an older set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from service import tracing
from service.engine import Engine
from service.grpc.server import serve_grpc
from service.http.app import create_app
from service.http.connections import WORKER_PROTOCOL, uvicorn_options
from service.logs import configure_logging
from service.settings import ENV_PREFIX, Settings, load_settings
from service.worker_sync import WorkerSync

logger = logging.getLogger("convserve.workers")

RUN_DIR_ENV = f"{ENV_PREFIX}RUN_DIR"  # set by the supervisor for its workers, not by users
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def create_worker_app() -> FastAPI:
    """The app of one worker (uvicorn's factory): settings from the environment the supervisor
    set, logs written from a thread, the shared :class:`WorkerSync`."""
    from service.memory import fix_mmap_threshold

    fix_mmap_threshold()  # each worker's own allocator (service/memory.py)
    settings = load_settings()
    flush_logs = configure_logging(settings.log_level, background=True, process=True,
                                   json_lines=settings.log_format == "json")
    tracing.configure()  # when OTEL_* asks for traces
    sync = WorkerSync(Path(os.environ[RUN_DIR_ENV]) / "sync")
    app = create_app(engine=Engine(settings, sync=sync))
    serve_grpc(app, reuse_port=True)  # every worker on the one gRPC port, as on the HTTP one
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        try:
            async with inner(app) as state:
                yield state
        finally:  # uvicorn re-raises SIGTERM once shut down, which skips atexit
            tracing.shutdown()
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
