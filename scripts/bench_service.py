"""Benchmark the HTTP service against the in-process limit, on loopback.

For each model it measures, in one run:

* the **in-process limit**: the same work (``service.imaging.prepare`` decode + preprocessing and
  an ONNX Runtime session with the service's settings) in this Python process, no HTTP:
  single-image latency (decode + run of batch 1, one after another; the best of each ORT thread
  count and of the ``solo`` session the service uses for a lone run) and throughput. A screening
  pass tries every way briefly (one-at-a-time, batches with decoding overlapped in a thread pool,
  one worker thread per core that decodes and runs its own batches; ORT threads: the service's,
  1, every core; batch sizes 1, 4 and ``--max-batch-size``). The fastest way is then measured
  again for ``--seconds`` right before each service measurement, ``--rounds`` times, and each
  point reports medians and the per-round ratios: the machine drifts by several per cent within
  a minute, and the best of many short windows would overstate the limit. Before each 1-client
  round the single-image latency is measured again too (``--seconds`` / 2), and that row's
  ``p50-inproc`` is the median of the per-round differences;
* the **service**: ``python -m service serve`` started as a subprocess, driven by a separate
  client process (``--client`` mode: asyncio, keep-alive HTTP/1.1 connections, pre-built
  requests, so the load generator costs little CPU) uploading a real 640x480 JPEG (skimage's
  ``chelsea`` resized) as multipart form data, at each concurrency in ``--clients``.

Models: ``imagenet-mobilenetv2`` from ``models/`` (when shipped) and ``resnet18-random``: a
torchvision ResNet-18 with **random weights** (speed only, its answers mean nothing) exported by
``training.export`` into a temporary directory.

Usage::

    python scripts/bench_service.py [--models imagenet-mobilenetv2,resnet18-random]
        [--clients 1,32] [--seconds 8] [--rounds 3] [--instances 2] [--intra-op-threads 0]
        [--max-batch-size 4]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service_process import free_port, start_service  # noqa: E402

BOUNDARY = b"convservebenchboundary"


# --------------------------------------------------------------------------- inputs and models
def make_jpeg() -> bytes:
    """A real photo (skimage's chelsea) as a 640x480 JPEG, quality 90."""
    from PIL import Image

    from training.assets import fetch

    image = Image.open(fetch("chelsea")).convert("RGB").resize((640, 480), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def export_resnet18_random(root: Path) -> None:
    """torchvision ResNet-18 with random weights, through training.export (speed only)."""
    import numpy as np
    import torch
    import torchvision

    from service.imaging import InputSpec, prepare
    from training.assets import fetch
    from training.data.preprocessing import Preprocessing
    from training.export import ExportSpec, export_model

    torch.manual_seed(0)
    resize = {"method": "shorter-side-center-crop", "shorter_side": 256,
              "interpolation": "bilinear"}
    spec = InputSpec.from_json({"height": 224, "width": 224, "channels": 3, "resize": resize})
    photos = np.stack([prepare(fetch(name).read_bytes(), spec, 10**9).array
                       for name in ("chelsea", "coffee", "rocket")])
    preprocessing = Preprocessing(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    export_model(
        torchvision.models.resnet18(weights=None),
        ExportSpec(name="resnet18-random", version=1,
                   labels=[f"class-{i}" for i in range(1000)], height=224, width=224,
                   channels=3, resize=resize, preprocessing=preprocessing.to_json(),
                   extra={"note": "RANDOM WEIGHTS: for speed measurements only"}),
        photos, preprocess=preprocessing.module(), models_dir=root)


def prepare_models(root: Path, names: list[str], source: Path) -> list[str]:
    """Fill ``root`` with the requested models; returns those available."""
    ready = []
    for name in names:
        if name == "resnet18-random":
            export_resnet18_random(root)
        elif any((source / name).glob("*/model.json")):
            shutil.copytree(source / name, root / name)
        else:
            print(f"skipping {name}: not found under {source} (not shipped yet?)")
            continue
        ready.append(name)
    return ready


# --------------------------------------------------------------------------- in-process limit
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass(frozen=True)
class Way:
    """One way of doing the work in-process: ORT threads, how it is driven, images per run.

    * ``sequential``: decode and run one image at a time;
    * ``pipelined``: one thread runs batches while a pool decodes the next batch;
    * ``workers``: one thread per core, each decoding its own batch and running it, so decoding
      and several runs overlap with no hand-off at all.
    """

    threads: int
    how: str
    batch: int

    def __str__(self) -> str:
        shown = f"workers{os.cpu_count() or 1}x" if self.how == "workers" else self.how
        return f"intra_op_threads={self.threads} {shown}{self.batch}"


class InProcess:
    """The service's work (``service.imaging.prepare`` + the ORT session) with no HTTP."""

    def __init__(self, settings: Any, name: str, jpeg: bytes) -> None:
        self.settings, self.name, self.jpeg = settings, name, jpeg
        self._versions: dict[int, Any] = {}

    def version(self, threads: int) -> Any:
        """The model loaded as the service loads it, with ``threads`` ORT threads."""
        from service.repository import ModelRepository

        if threads not in self._versions:
            repository = ModelRepository(
                self.settings.model_copy(update={"intra_op_threads": threads}))
            repository.scan()
            self._versions[threads] = repository.get(self.name)
        return self._versions[threads]

    def latency(self, threads: int, seconds: float, solo: bool = False) -> dict:
        """Single-image latency, one after another; ``solo``: on the session the service uses
        for a lone run (every core, spinning within the run), where there is one."""
        from service.imaging import prepare

        version = self.version(threads)
        spec, limit = version.input, self.settings.max_image_pixels
        for _ in range(5):
            version.infer(prepare(self.jpeg, spec, limit).array[None], alone=solo)
        latencies = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            version.infer(prepare(self.jpeg, spec, limit).array[None], alone=solo)
            latencies.append(time.perf_counter() - start)
        return {"p50_ms": percentile(latencies, 50) * 1e3,
                "p99_ms": percentile(latencies, 99) * 1e3, "threads": threads, "solo": solo}

    def throughput(self, way: Way, seconds: float) -> dict:
        """Images per second and CPU ms per image of ``way``; each thread's first run is not
        measured (a GPU builds per-thread state on it)."""
        import numpy as np

        from service.imaging import prepare

        version = self.version(way.threads)
        spec, limit = version.input, self.settings.max_image_pixels

        def run(images: list[Any]) -> None:
            version.infer(np.stack(images), alone=False)

        def decoded(count: int) -> list[Any]:
            return [prepare(self.jpeg, spec, limit).array for _ in range(count)]

        workers = (os.cpu_count() or 1) if way.how == "workers" else 1
        counts = [0] * workers
        started = threading.Barrier(workers + 1)
        stop = [float("inf")]

        def work(slot: int) -> None:
            if way.how == "pipelined":  # decoding of the next batch overlaps this one's run
                with ThreadPoolExecutor(self.settings.decode_threads) as pool:
                    run(decoded(way.batch))
                    jobs = [pool.submit(prepare, self.jpeg, spec, limit) for _ in range(way.batch)]
                    started.wait()
                    while time.perf_counter() < stop[0]:
                        images = [job.result().array for job in jobs]
                        jobs = [pool.submit(prepare, self.jpeg, spec, limit)
                                for _ in range(way.batch)]
                        run(images)
                        counts[slot] += way.batch
                return
            run(decoded(way.batch))
            started.wait()
            while time.perf_counter() < stop[0]:
                run(decoded(way.batch))
                counts[slot] += way.batch

        threads = [threading.Thread(target=work, args=(slot,)) for slot in range(workers)]
        for thread in threads:
            thread.start()
        started.wait()
        start, cpu = time.perf_counter(), time.process_time()
        stop[0] = start + seconds
        for thread in threads:
            thread.join()
        done = sum(counts)
        return {"per_s": done / (time.perf_counter() - start),
                "cpu_ms": (time.process_time() - cpu) * 1e3 / max(1, done)}

    def screen(self, thread_options: list[int], batches: list[int], seconds: float,
               ) -> tuple[dict, Way, dict[Way, dict]]:
        """Every way, briefly: the best single-image latency and the fastest way."""
        ways = [Way(t, "sequential", 1) for t in thread_options] + [
            Way(t, how, b) for t in thread_options for how in ("pipelined", "workers")
            for b in batches]
        share = seconds / len(ways)
        latency = min((self.latency(t, share, solo) for t in thread_options
                       for solo in (False, True)), key=lambda r: r["p50_ms"])
        results = {way: self.throughput(way, share) for way in ways}
        best = max(results, key=lambda way: results[way]["per_s"])
        return latency, best, results


# --------------------------------------------------------------------------- load generator
def build_request(host: str, port: int, model: str, jpeg: bytes) -> bytes:
    body = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + jpeg + b"\r\n--"
            + BOUNDARY + b"--\r\n")
    head = (f"POST /v1/models/{model}/classify?top_k=5 HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _one_client(host: str, port: int, request: bytes, stop_at: float, measure_from: float,
                      latencies: list[float], errors: list[int], done: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        if status != 200:
            errors.append(status)
        elif start >= measure_from:
            latencies.append(time.perf_counter() - start)
        done.append(1)
    writer.close()


async def _drive(host: str, port: int, request: bytes, clients: int, warmup: float,
                 seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[int] = []
    done: list[int] = []
    begin = time.perf_counter()
    measure_from, stop_at = begin + warmup, begin + warmup + seconds
    await asyncio.gather(*(_one_client(host, port, request, stop_at, measure_from, latencies,
                                       errors, done) for _ in range(clients)))
    return {"clients": clients, "requests": len(latencies), "errors": len(errors),
            "total": len(done),
            "per_s": len(latencies) / seconds,
            "p50_ms": percentile(latencies, 50) * 1e3 if latencies else float("nan"),
            "p99_ms": percentile(latencies, 99) * 1e3 if latencies else float("nan")}


def client_main(args: argparse.Namespace) -> None:
    """``--client`` mode: drive the server, print one JSON line."""
    jpeg = Path(args.jpeg).read_bytes()
    request = build_request("127.0.0.1", args.port, args.model, jpeg)
    try:  # the load generator shares the cores with the server: keep it lean
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    result = run(_drive("127.0.0.1", args.port, request, args.concurrency, args.warmup,
                        args.seconds))
    print(json.dumps(result))


# --------------------------------------------------------------------------- server
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(port: int, model: str, jpeg_path: Path, clients: int, args: argparse.Namespace,
          server_pid: int) -> dict:
    cpu_before = cpu_seconds(server_pid)
    out = subprocess.run(
        [sys.executable, __file__, "--client", "--port", str(port), "--model", model,
         "--jpeg", str(jpeg_path), "--concurrency", str(clients), "--seconds", str(args.seconds),
         "--warmup", str(args.warmup)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["server_cpu_ms"] = (cpu_seconds(server_pid) - cpu_before) * 1e3 / max(1, result["total"])
    return result


# --------------------------------------------------------------------------- main
def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {"CONVSERVE_PROVIDERS": os.environ.get("CONVSERVE_PROVIDERS", "CPU"),
            "CONVSERVE_INTRA_OP_THREADS": str(args.intra_op_threads),
            "CONVSERVE_INSTANCES": str(args.instances),
            "CONVSERVE_MAX_BATCH_SIZE": str(args.max_batch_size),
            "CONVSERVE_MAX_QUEUE_DELAY_MS": str(args.max_queue_delay_ms),
            "CONVSERVE_DECODE_WORKERS": str(args.decode_workers),
            "CONVSERVE_LOG_LEVEL": args.log_level}


def summarise(clients: int, rounds: list[tuple[dict, dict]]) -> dict:
    """Medians over the rounds of (in-process limit, service) measured back to back."""

    ratios = [served["per_s"] / limit["per_s"] for limit, served in rounds]
    median = statistics.median
    return {"clients": clients, "per_s": median(s["per_s"] for _, s in rounds),
            "p50_ms": median(s["p50_ms"] for _, s in rounds),
            "p99_ms": median(s["p99_ms"] for _, s in rounds),
            "errors": sum(s["errors"] for _, s in rounds),
            "limit_per_s": median(limit["per_s"] for limit, _ in rounds),
            "ratio": median(ratios), "ratios": ratios,
            "server_cpu_ms": median(s["server_cpu_ms"] for _, s in rounds),
            "cpu_ratio": median(limit["cpu_ms"] / s["server_cpu_ms"] for limit, s in rounds),
            "p50_gaps": [s["p50_ms"] - limit["single_p50_ms"] for limit, s in rounds
                         if "single_p50_ms" in limit]}


def bench_model(name: str, models: Path, jpeg: bytes, jpeg_path: Path,
                args: argparse.Namespace) -> None:
    from service.settings import load_settings

    env = server_env(args)
    settings = load_settings(models_dir=models,
                             providers=os.environ.get("CONVSERVE_PROVIDERS", "CPU"),
                             intra_op_threads=args.intra_op_threads, instances=args.instances,
                             max_batch_size=args.max_batch_size,
                             decode_workers=args.decode_workers)
    batches = sorted({1, 4, args.max_batch_size})  # the limit does not depend on the setting
    threads = sorted({settings.intra_threads, 1, os.cpu_count() or 1})  # service's, 1, all
    local = InProcess(settings, name, jpeg)
    latency, best, screened = local.screen(threads, batches, args.seconds)
    print(f"\n== {name} ==")
    for way, result in screened.items():
        print(f"in-process {way}: {result['per_s']:.1f}/s, CPU {result['cpu_ms']:.2f} ms/image")
    print(f"in-process: single image p50 {latency['p50_ms']:.2f} ms (p99 {latency['p99_ms']:.2f};"
          f" intra_op_threads={latency['threads']}{' solo' * latency['solo']})"
          f"; fastest way {best}, measured again for {args.seconds:g} s before each service "
          f"point ({args.rounds} rounds)")
    port = free_port()
    server = start_service(models, port, env, log=models.parent / "server.log")
    rows = []
    try:
        for clients in args.clients:
            rounds = []
            for _ in range(args.rounds):
                limit = local.throughput(best, args.seconds)
                if clients == 1:  # the single-image latency too, in the same minute
                    single = local.latency(latency["threads"], args.seconds / 2,
                                           latency["solo"])
                    limit["single_p50_ms"] = single["p50_ms"]
                rounds.append((limit, drive(port, name, jpeg_path, clients, args, server.pid)))
            rows.append(summarise(clients, rounds))
    finally:
        server.terminate()
        server.wait(30)
    print(f"{'clients':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'limit/s':>8} {'thr/limit':>10} {'(rounds)':>16} {'p50-inproc':>11} "
          f"{'server CPU/req':>15} {'CPU ratio':>10}")
    for row in rows:
        spread = " ".join(f"{r:.2f}" for r in row["ratios"])
        # 1 client: the service's p50 against the single-image p50 measured just before it, the
        # median over rounds; other rows against the screening pass's
        gap = (statistics.median(row["p50_gaps"]) if row["p50_gaps"]
               else row["p50_ms"] - latency["p50_ms"])
        print(f"{row['clients']:>8} {row['per_s']:>8.1f} {row['p50_ms']:>8.2f} "
              f"{row['p99_ms']:>8.2f} {row['errors']:>7} {row['limit_per_s']:>8.1f} "
              f"{row['ratio']:>10.2f} {spread:>16} {gap:>+10.2f}ms "
              f"{row['server_cpu_ms']:>12.2f} ms {row['cpu_ratio']:>10.2f}")
        if row["p50_gaps"]:
            print(f"{'':>8} p50 - single image p50 by round: "
                  + " ".join(f"{g:+.2f}" for g in row["p50_gaps"]) + " ms")


def add_server_arguments(parser: argparse.ArgumentParser, log_level: str) -> None:
    """The server settings a benchmark sets (read back by :func:`server_env`)."""
    parser.add_argument("--intra-op-threads", type=int, default=0)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    parser.add_argument("--decode-workers", type=int, default=0)
    parser.add_argument("--log-level", default=log_level, help="the server's (info: access lines)")


def machine() -> str:
    """The line that says where a benchmark ran."""
    from service.tuning import cpu_name

    return (f"machine: {cpu_name()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {platform.platform()}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="imagenet-mobilenetv2,resnet18-random")
    parser.add_argument("--source", type=Path, default=ROOT / "models",
                        help="where to copy the models from (default: models/)")
    parser.add_argument("--clients", default="1,32")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time per point")
    parser.add_argument("--rounds", type=int, default=3,
                        help="in-process limit and service measured back to back this many times "
                             "per point; medians are printed")
    add_server_arguments(parser, log_level="info")
    # --client mode (the load generator, run as a separate process)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--jpeg", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.client:
        args.clients = [int(c) for c in args.clients.split(",")]
    return args


def main() -> None:
    args = parse_args()
    if args.client:
        client_main(args)
        return
    print(machine())
    print(f"settings: {server_env(args)}; {args.seconds:g} s measured per point after "
          f"{args.warmup:g} s warm-up; multipart upload of a 640x480 JPEG")
    jpeg = make_jpeg()
    with tempfile.TemporaryDirectory(prefix="convserve-bench-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        jpeg_path = Path(tmp) / "photo.jpg"
        jpeg_path.write_bytes(jpeg)
        for name in prepare_models(models, args.models.split(","), args.source):
            bench_model(name, models, jpeg, jpeg_path, args)
    print("\nresnet18-random has random weights: its figures measure speed only.")
    print("latencies are measured by the client process, over loopback, on the same machine.")
    print("CPU ratio = in-process CPU per image / server CPU per request: the throughput ratio "
          "a saturated machine would show, robust to other load on a shared one.")


if __name__ == "__main__":
    main()
