"""The service's own Python cost per classify request, with and without ``ClassifyShortcut``.

Drives the ASGI app in this process (no sockets, no uvicorn) with a multipart upload of the
model's kind of image: a 640x480 JPEG photo for ImageNet models, a real MNIST digit (28x28 PNG)
for ``mnist-lenet5``, a real face crop (64x64 JPEG) for ``fer-minixception``. With ``--stub``,
decoding and ONNX Runtime are stubbed out (a cached decode, fixed probabilities), so what is
left is routing, multipart parsing, batching hand-offs, top-k, the response, logging and
metrics; without it the whole request runs. Prints CPU microseconds per request (all threads)
for the app as served and for the same app without the shortcut (requests then go through
FastAPI's router), in interleaved rounds, and the ratio of the two.

Usage::

    python scripts/bench_request_overhead.py [--requests 3000] [--rounds 3] [--stub] \
        [--models imagenet-mobilenetv2,mnist-lenet5,fer-minixception]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_service import build_request, make_jpeg  # noqa: E402


def image_for(model: str) -> bytes:
    """An image of the kind ``model`` classifies (see the module docstring)."""
    import gzip
    import io
    import pickle

    from PIL import Image

    from training.assets import fetch

    out = io.BytesIO()
    if model.startswith("mnist"):
        with gzip.open(fetch("mnist-pkl"), "rb") as file:
            test_images = pickle.load(file, encoding="latin1")[2][0]
        digit = (test_images[0].reshape(28, 28) * 255).astype(np.uint8)
        Image.fromarray(digit, "L").save(out, "PNG")
    elif model.startswith("fer"):
        face = Image.open(fetch("face-happy")).convert("L")
        side = min(face.size)
        face.crop((0, 0, side, side)).resize((64, 64)).save(out, "JPEG", quality=90)
    else:
        return make_jpeg()
    return out.getvalue()


async def cost_per_request(shortcut: bool, model: str, requests: int, stub: bool = True) -> float:
    """CPU seconds per request through the whole app (``shortcut=False``: without it)."""
    import service.pipeline
    from service.http.app import create_app
    from service.http.routes.classify import ClassifyShortcut
    from service.imaging import prepare
    from service.settings import load_settings

    app = create_app(load_settings(models_dir=ROOT / "models", providers="CPU",
                                   log_level="warning"))
    if not shortcut:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not ClassifyShortcut]
    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await lifespan.put({"type": "lifespan.startup"})

    async def ignore(_: Any) -> None:
        return None

    state: dict[str, Any] = {}
    startup = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, lifespan.get,
            ignore))
    engine = app.state.engine
    while not engine.readiness().ready:
        await asyncio.sleep(0.05)
    version = engine.get(model)
    jpeg = image_for(model)
    real_prepare = service.pipeline.prepare
    if stub:
        decoded = prepare(jpeg, version.input, 10**9)
        probabilities = version.infer(decoded.array[None])
        service.pipeline.prepare = lambda *_: decoded  # type: ignore[assignment]
        version.__dict__["infer"] = lambda batch, alone=None: np.repeat(probabilities,
                                                                        len(batch), 0)

    head, _, body = build_request("127.0.0.1", 8000, model, jpeg).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    target = lines[0].split(b" ")[1]
    path, _, query = target.partition(b"?")
    headers = [(k.lower(), v) for k, v in (line.split(b": ", 1) for line in lines[1:])]

    async def one() -> None:
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)  # no disconnect while answering
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": path.decode(), "raw_path": path,
                 "query_string": query, "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
                 "state": dict(state)}
        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent

    for _ in range(200):
        await one()
    start = time.process_time()
    for _ in range(requests):
        await one()
    cost = (time.process_time() - start) / requests
    service.pipeline.prepare = real_prepare  # type: ignore[assignment]
    await lifespan.put({"type": "lifespan.shutdown"})
    await startup
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs, interleaved")
    parser.add_argument("--stub", action="store_true", help="stub decoding and inference out")
    parser.add_argument("--models", default="imagenet-mobilenetv2",
                        help="comma-separated models in models/")
    args = parser.parse_args()
    for model in args.models.split(","):
        costs: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for shortcut in (True, False):
                costs[shortcut].append(asyncio.run(
                    cost_per_request(shortcut, model, args.requests, args.stub)))
        on, off = min(costs[True]), min(costs[False])
        print(f"{model}: shortcut {on * 1e6:6.0f} us, router {off * 1e6:6.0f} us of CPU per "
              f"request (best of {args.rounds}); the shortcut saves {(off - on) / off:.1%}",
              flush=True)


if __name__ == "__main__":
    main()
