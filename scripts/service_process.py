"""``convserve serve`` as a subprocess for the benchmark scripts: a free port, start, readiness."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(models: Path, port: int, env: dict[str, str] | None = None, *,
                  log: Path | int | None = None, timeout: float = 120.0,
                  tree: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start the service over ``models`` on 127.0.0.1:``port`` and wait until /readyz is 200.

    Args:
        models: The models directory.
        port: Where to listen.
        env: ``CONVSERVE_*`` settings over this process's environment (providers default to CPU,
            gRPC to off).
        log: A file to append the server's output to (its tail is shown if the start fails),
            ``subprocess.DEVNULL``, or None to share this process's stdout/stderr.
        timeout: Seconds to wait for readiness.
        tree: The checkout whose code serves (``python -m service`` runs there).

    Raises:
        SystemExit: the service exited or was not ready in time.
    """
    providers = os.environ.get("CONVSERVE_PROVIDERS", "CPU")
    environment = {**os.environ, "CONVSERVE_PROVIDERS": providers,
                   "CONVSERVE_GRPC_PORT": "0", **(env or {})}  # gRPC only when asked for
    output = log.open("ab") if isinstance(log, Path) else log
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--models", str(models)], cwd=tree, env=environment, stdout=output, stderr=output)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    tail = log.read_text(errors="replace")[-2000:] if isinstance(log, Path) else ""
    raise SystemExit(f"the service did not become ready in {timeout:.0f} s\n{tail}")
