"""How long ``convserve serve`` takes to start: the figures a Kubernetes startup probe is sized by.

Starts the service over a models directory several times and prints, for each start, the seconds
from launch until ``/healthz`` first answers (the process is up) and until ``/readyz`` answers 200
(every model loaded and warm), and the server's peak resident memory then (``VmHWM``, Linux): the
figure the manifests' memory request is sized by. ``CONVSERVE_*`` variables in the environment
apply; providers default to CPU::

    python scripts/startup_time.py --models models --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from service_process import ROOT, free_port


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size in MiB (0 where /proc is not there)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return 0.0
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_200(url: str, started: float, process: subprocess.Popen[bytes]) -> float:
    """Seconds from ``started`` until ``url`` answers 200 (polled every 20 ms)."""
    while process.poll() is None:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"the service exited with status {process.returncode}")


def one_start(models: Path) -> tuple[float, float, float]:
    """(seconds to /healthz, seconds to /readyz, peak RSS in MiB) for one start."""
    port = free_port()
    env = {**os.environ, "CONVSERVE_PROVIDERS": os.environ.get("CONVSERVE_PROVIDERS", "CPU")}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--models", str(models)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        alive = wait_200(f"http://127.0.0.1:{port}/healthz", started, process)
        ready = wait_200(f"http://127.0.0.1:{port}/readyz", started, process)
        return alive, ready, peak_rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = [one_start(args.models.resolve()) for _ in range(args.runs)]
    for i, (alive, ready, rss) in enumerate(rows, 1):
        print(f"run {i}: /healthz {alive:6.2f} s  /readyz {ready:6.2f} s  peak RSS {rss:6.0f} MiB")
    for label, column in (("/healthz", 0), ("/readyz", 1), ("peak RSS", 2)):
        values = [row[column] for row in rows]
        print(f"{label}: median {statistics.median(values):.2f}, max {max(values):.2f}")


if __name__ == "__main__":
    main()
