"""Latency of one image through /v1 classify (JPEG upload) and /v2 infer (binary and JSON tensors).

Starts ``python -m service serve`` over the given models, sends the same real photo N times one
after another through each path and prints the median and 90th percentile in milliseconds.

    .venv/bin/python scripts/bench_v2.py --model imagenet-mobilenetv2 --requests 50
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton
from PIL import Image
from service_process import free_port, start_service

from service.imaging import InputSpec, prepare
from training.assets import fetch

REPO = Path(__file__).resolve().parents[1]


def _time(call: Callable[[], object], count: int) -> tuple[float, float]:
    call()  # warm-up
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), float(np.percentile(times, 90))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imagenet-mobilenetv2")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    meta = json.loads(max((args.models / args.model).glob("*/model.json")).read_text())
    photo = Image.open(fetch("chelsea")).convert("RGB")
    jpeg = io.BytesIO()
    photo.save(jpeg, "JPEG", quality=90)
    tensor = prepare(jpeg.getvalue(), InputSpec.from_json(meta["input"]), 10**8).array[None]
    port = free_port()
    process = start_service(args.models, port, log=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=url, timeout=60)
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")

        def v1() -> object:
            return http.post(f"/v1/models/{args.model}/classify",
                             files={"file": ("chelsea.jpg", jpeg.getvalue())}).json()

        def v2(binary: bool) -> Callable[[], object]:
            def call() -> object:
                data = triton.InferInput("image", list(tensor.shape), "UINT8")
                data.set_data_from_numpy(tensor, binary_data=binary)
                out = triton.InferRequestedOutput("probabilities", binary_data=binary)
                return client.infer(args.model, [data], outputs=[out])
            return call

        print(f"{args.model}, one {photo.width}x{photo.height} photo per request, "
              f"{args.requests} sequential requests, providers "
              f"{os.environ.get('CONVSERVE_PROVIDERS', 'CPU')}")
        for name, call in (("v1 classify, JPEG upload", v1), ("v2 infer, binary tensor", v2(True)),
                           ("v2 infer, JSON tensor", v2(False))):
            median, p90 = _time(call, args.requests)
            print(f"  {name:<28} median {median:7.2f} ms   p90 {p90:7.2f} ms")
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
