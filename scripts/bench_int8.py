"""Benchmark each shipped int8 model against its float model, in one run, on this machine.

For each ``models/*-int8`` (and the float model its ``model.json`` names), float and int8
measured back to back, ``--rounds`` times, medians printed with the float/int8 speed-up:

* **ORT alone**: an ONNX Runtime session with the service's thread settings, uint8 input
  already at the model's size: single-image p50 (batch 1) and ms per image at batch 32;
* **decode + ORT**: ``service.imaging.prepare`` of a 640x480 JPEG (skimage's chelsea, quality 90)
  then the batch-1 run, in this process: the in-process limit of one request;
* **the service**: ``python -m service serve`` (both models loaded), driven by
  ``scripts/bench_service.py``'s client process at each of ``--clients`` (keep-alive HTTP/1.1
  multipart uploads of the same JPEG): requests per second and p50.

Usage::

    python scripts/bench_int8.py [--models imagenet-mobilenetv2-int8,...] [--clients 1,32]
        [--seconds 4] [--rounds 2]

Absolute figures move with the machine's load; the speed-ups are ratios of rounds measured a few
seconds apart. Prints ``lscpu``'s model name and the CPU flags int8 kernels use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
from bench_service import (  # noqa: E402
    add_server_arguments,
    drive,
    machine,
    make_jpeg,
    server_env,
)
from service_process import free_port, start_service  # noqa: E402

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_line() -> str:
    """The CPU's model name and which int8-relevant flags it has (``lscpu``)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "cpu: lscpu unavailable"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    have = [f for f in INT8_FLAGS if f in flags]
    return (f"cpu: {fields.get('Model name', '?').strip()}; int8-relevant flags: "
            f"{' '.join(have) or 'none'} (absent: "
            f"{' '.join(f for f in INT8_FLAGS if f not in flags) or 'none'})")


def timed(run: Callable[[], object], seconds: float) -> list[float]:
    """Durations of ``run`` called back to back for ``seconds`` (after one unmeasured call)."""
    run()
    times, stop = [], time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


class Local:
    """One model in this process: an ONNX Runtime session set up as the service sets it up."""

    def __init__(self, directory: Path, jpeg: bytes) -> None:
        import onnxruntime as ort

        from model_format import ClassifierCard, load_card
        from service.imaging import InputSpec, prepare
        from service.runtime import session_options
        from service.settings import load_settings

        card = load_card(directory / "model.json")
        assert isinstance(card, ClassifierCard)
        self.spec = InputSpec.from_card(card.input)
        self.prepare, self.jpeg = prepare, jpeg
        options = session_options(load_settings(providers="CPU"))
        self.session = ort.InferenceSession(str(directory / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input, self.output = card.input.name, card.output.name
        image = prepare(jpeg, self.spec, 50_000_000).array
        self.one, self.many = image[None], np.repeat(image[None], 32, axis=0)

    def ort_p50_ms(self, seconds: float) -> float:
        return statistics.median(timed(lambda: self.session.run(
            [self.output], {self.input: self.one}), seconds)) * 1e3

    def ort_batch_ms(self, seconds: float) -> float:
        return statistics.median(timed(lambda: self.session.run(
            [self.output], {self.input: self.many}), seconds)) * 1e3 / len(self.many)

    def decode_ort_p50_ms(self, seconds: float) -> float:
        def request() -> None:
            array = self.prepare(self.jpeg, self.spec, 50_000_000).array
            self.session.run([self.output], {self.input: array[None]})
        return statistics.median(timed(request, seconds)) * 1e3


def pairs(names: list[str] | None) -> list[tuple[str, str, Path, Path]]:
    """(float name, int8 name, float dir, int8 dir) of each shipped int8 model."""
    from model_format import ClassifierCard, load_card

    found = []
    for card_path in sorted((ROOT / "models").glob("*-int8/*/model.json")):
        card = load_card(card_path)
        if not isinstance(card, ClassifierCard) or card.quantization is None:
            continue
        if names and card.name not in names:
            continue
        source = card.quantization.source
        found.append((source.name, card.name,
                      ROOT / "models" / source.name / str(source.version), card_path.parent))
    return found


def row(what: str, floats: list[float], int8s: list[float], unit: str, higher: bool) -> None:
    """One line: medians and the int8 speed-up (median of the per-round ratios)."""
    ratios = [(i / f if higher else f / i) for f, i in zip(floats, int8s, strict=True)]
    print(f"  {what:<34} float {statistics.median(floats):9.2f} {unit:<8} int8 "
          f"{statistics.median(int8s):9.2f} {unit:<8} speed-up x{statistics.median(ratios):.2f}"
          f"  (rounds: {' '.join(f'{r:.2f}' for r in ratios)})")


def bench_pair(float_name: str, int8_name: str, float_dir: Path, int8_dir: Path,
               jpeg: bytes, jpeg_path: Path, args: argparse.Namespace) -> None:
    print(f"\n== {int8_name} vs {float_name} ==")
    local = {"float": Local(float_dir, jpeg), "int8": Local(int8_dir, jpeg)}
    for what, method, unit in (("ORT alone, batch 1 (p50)", "ort_p50_ms", "ms"),
                               ("ORT alone, batch 32", "ort_batch_ms", "ms/img"),
                               ("decode + ORT, batch 1 (p50)", "decode_ort_p50_ms", "ms")):
        got: dict[str, list[float]] = {"float": [], "int8": []}
        for _ in range(args.rounds):
            for kind in ("float", "int8"):
                got[kind].append(getattr(local[kind], method)(args.seconds))
        row(what, got["float"], got["int8"], unit, higher=False)
    with tempfile.TemporaryDirectory(prefix="convserve-int8-bench-") as tmp:
        models = Path(tmp) / "models"
        for name, directory in ((float_name, float_dir), (int8_name, int8_dir)):
            shutil.copytree(directory, models / name / directory.name)
        port = free_port()
        server = start_service(models, port, server_env(args), log=Path(tmp) / "server.log")
        try:
            for clients in args.clients:
                served: dict[str, list[dict]] = {"float": [], "int8": []}
                for _ in range(args.rounds):
                    for kind, name in (("float", float_name), ("int8", int8_name)):
                        served[kind].append(drive(port, name, jpeg_path, clients, args,
                                                  server.pid))
                errors = sum(r["errors"] for rs in served.values() for r in rs)
                row(f"service, {clients} client(s), req/s", [r["per_s"] for r in served["float"]],
                    [r["per_s"] for r in served["int8"]], "req/s", higher=True)
                row(f"service, {clients} client(s), p50", [r["p50_ms"] for r in served["float"]],
                    [r["p50_ms"] for r in served["int8"]], "ms", higher=False)
                if errors:
                    print(f"  ({errors} error answers)")
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="int8 model names, comma-separated (default: all)")
    parser.add_argument("--clients", default="1,32")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured time per point")
    parser.add_argument("--rounds", type=int, default=2, help="float/int8 alternations")
    add_server_arguments(parser, log_level="warning")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    print(machine())
    print(cpu_line())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"settings: {server_env(args)}; {args.seconds:g} s per point, {args.rounds} rounds")
    jpeg = make_jpeg()
    with tempfile.TemporaryDirectory(prefix="convserve-int8-jpeg-") as tmp:
        jpeg_path = Path(tmp) / "photo.jpg"
        jpeg_path.write_bytes(jpeg)
        for pair in pairs(args.models.split(",") if args.models else None):
            bench_pair(*pair, jpeg, jpeg_path, args)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
