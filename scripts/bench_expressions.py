"""Benchmark POST /v1/expressions: faces per second on the five-person photo.

Starts the service under uvicorn on a copy of ``models/fer-minixception`` and
``models/face-mtcnn`` (nothing else loads), warms it up, then for each concurrency level sends
the photo from that many clients for ``--seconds``. Each answer's ``Server-Timing`` header splits
the server's time into decoding, detection (MTCNN), cropping and classification (the batched
expression model, queue included). Prints one line per level.

Usage::

    python scripts/bench_expressions.py [--clients 1 16] [--seconds 10] [--photo multi-face]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service_process import free_port, start_service  # noqa: E402

from training.assets import fetch  # noqa: E402

STAGES = ("decode", "detect", "crop", "classify")


def _timings(header: str) -> dict[str, float]:
    """``Server-Timing: detect;dur=12.3, ...`` -> {"detect": 12.3, ...} (milliseconds)."""
    out = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            out[name] = float(duration)
    return out


async def _client(url: str, data: bytes, stop: float, records: list[tuple[float, dict, int]],
                  refused: list[str]) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            response = await http.post(url, content=data, headers={"content-type": "image/jpeg"})
            if response.status_code != 200:  # counted and reported, not a crash
                refused.append(f"{response.status_code} {response.text[:200]}")
                await asyncio.sleep(float(response.headers.get("retry-after", "0.1")))
                continue
            records.append((time.perf_counter() - start,
                            _timings(response.headers.get("server-timing", "")),
                            int(response.headers.get("x-faces", "0"))))


async def run_level(url: str, data: bytes, clients: int, seconds: float) -> str:
    records: list[tuple[float, dict, int]] = []
    refused: list[str] = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(url, data, start + seconds, records, refused)
                           for _ in range(clients)))
    elapsed = time.perf_counter() - start
    answered = f"{clients:>3} clients: {len(refused)} refused"
    if refused:
        answered += f" (first: {refused[0]})"
    if not records:
        return answered + ", none answered"
    faces = sum(r[2] for r in records)
    latency = sorted(r[0] for r in records)
    stage = {s: statistics.mean(r[1].get(s, 0.0) for r in records) for s in STAGES}
    per_face = {s: stage[s] / max(faces / len(records), 1) for s in ("detect", "classify")}
    return (f"{clients:>3} clients: {len(records) / elapsed:6.1f} req/s {faces / elapsed:7.1f} "
            f"faces/s | latency p50 {latency[len(latency) // 2] * 1000:6.1f} ms p95 "
            f"{latency[int(len(latency) * 0.95)] * 1000:6.1f} ms | per request: "
            + " ".join(f"{s} {stage[s]:.1f}" for s in STAGES)
            + f" ms | per face: detect {per_face['detect']:.1f} classify "
            f"{per_face['classify']:.2f} ms | {len(refused)} refused")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--photo", default="multi-face", help="an asset of training.assets")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    args = parser.parse_args(argv)
    data = fetch(args.photo).read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch)
        for name in ("fer-minixception", "face-mtcnn"):
            shutil.copytree(args.models_dir / name, models / name)
        port = free_port()
        env = {"CONVSERVE_LOG_LEVEL": "warning"}
        if args.threads:
            env["CONVSERVE_INTRA_OP_THREADS"] = str(args.threads)
        server = start_service(models, port, env)
        try:
            url = f"http://127.0.0.1:{port}/v1/expressions"
            asyncio.run(run_level(url, data, 2, 1.0))  # warm-up
            print(f"{args.photo} on {os.cpu_count()} CPU core(s), "
                  f"providers {os.environ.get('CONVSERVE_PROVIDERS', 'CPU')}")
            for clients in args.clients:
                print(asyncio.run(run_level(url, data, clients, args.seconds)), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
