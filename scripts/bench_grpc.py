"""gRPC (raw tensor) vs HTTP /v2 (binary tensor) vs /v1 (multipart JPEG): one service, interleaved.

Starts ``python -m service serve`` with gRPC on a free port over the given models and, for each
model, sends the same real photo (``chelsea``) through the three paths with 1 and with 32
concurrent clients (asyncio tasks in this one process: tritonclient's ``grpc.aio`` client,
aiohttp for HTTP, as tritonclient's ``http.aio`` client uses). The cells run in rounds, each
path in turn, so that a noisy neighbour slows every path alike; each prints images per second
and the median and 90th percentile latency over all its rounds. /v2 and gRPC send the tensor
the service would have decoded (the client preprocesses); /v1 sends the JPEG and the service
decodes and resizes it.

    .venv/bin/python scripts/bench_grpc.py --seconds 3 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import numpy as np
import tritonclient.grpc.aio as tgrpc
from PIL import Image
from service_process import free_port, start_service

from service.imaging import InputSpec, prepare
from training.assets import fetch

REPO = Path(__file__).resolve().parents[1]
HEADER = "Inference-Header-Content-Length"
Call = Callable[[], Awaitable[object]]


def _cpu() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _v2_body(model: str, tensor: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8",
                                     "shape": list(tensor.shape),
                                     "parameters": {"binary_data_size": tensor.nbytes}}],
                         "outputs": [{"name": "probabilities",
                                      "parameters": {"binary_data": True}}]}).encode()
    return header + tensor.tobytes(), {HEADER: str(len(header)),
                                       "Content-Type": "application/octet-stream"}


async def _cell(call: Call, clients: int, seconds: float) -> tuple[int, list[float]]:
    """Images answered and their latencies (ms) with ``clients`` concurrent callers."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), latencies


async def bench(args: argparse.Namespace, http_url: str, grpc_address: str) -> None:
    photo = Image.open(fetch("chelsea")).convert("RGB")
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=90)
    jpeg = out.getvalue()
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(http_url, connector=connector) as http:
        grpc_client = tgrpc.InferenceServerClient(grpc_address)
        for model in args.model:
            meta = json.loads(max((args.models / model).glob("*/model.json")).read_text())
            tensor = prepare(jpeg, InputSpec.from_json(meta["input"]), 10**8).array[None]
            body, headers = _v2_body(model, tensor)
            grpc_input = tgrpc.InferInput("image", list(tensor.shape), "UINT8")
            grpc_input.set_data_from_numpy(tensor)

            async def v1(model: str = model) -> object:
                form = aiohttp.FormData()
                form.add_field("file", jpeg, filename="chelsea.jpg", content_type="image/jpeg")
                async with http.post(f"/v1/models/{model}/classify", data=form) as answer:
                    answer.raise_for_status()
                    return await answer.read()

            async def v2(model: str = model, body: bytes = body,
                         headers: dict[str, str] = headers) -> object:
                async with http.post(f"/v2/models/{model}/infer", data=body,
                                     headers=headers) as answer:
                    answer.raise_for_status()
                    return await answer.read()

            async def grpc_raw(model: str = model, data: object = grpc_input) -> object:
                return await grpc_client.infer(model, [data])

            paths: dict[str, Call] = {"gRPC raw tensor": grpc_raw, "HTTP /v2 binary": v2,
                                      "HTTP /v1 JPEG": v1}
            for call in paths.values():  # warm-up: connections, sessions, first batches
                await asyncio.gather(*(call() for _ in range(4)))
            for clients in args.clients:
                results: dict[str, tuple[int, list[float]]] = {name: (0, []) for name in paths}
                for _ in range(args.rounds):
                    for name, call in paths.items():
                        count, latencies = await _cell(call, clients, args.seconds)
                        total, seen = results[name]
                        results[name] = (total + count, seen + latencies)
                print(f"{model}, {clients} client(s):")
                for name, (count, latencies) in results.items():
                    rate = count / (args.seconds * args.rounds)
                    print(f"  {name:<17} {rate:8.1f} images/s   median "
                          f"{np.median(latencies):7.2f} ms   p90 "
                          f"{np.percentile(latencies, 90):7.2f} ms")
        await grpc_client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append",
                        help="repeat for several (default: mnist-lenet5, imagenet-mobilenetv2)")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="per path, per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.model = args.model or ["mnist-lenet5", "imagenet-mobilenetv2"]
    port, grpc_port = free_port(), free_port()
    process = start_service(args.models, port, {"CONVSERVE_GRPC_PORT": str(grpc_port)},
                            log=subprocess.DEVNULL)
    print(f"convserve, one worker, providers {os.environ.get('CONVSERVE_PROVIDERS', 'CPU')}, "
          f"{os.cpu_count()} cores ({_cpu()}); clients in this process; {args.rounds} rounds "
          f"of {args.seconds:g} s per path")
    try:
        asyncio.run(bench(args, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"))
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
