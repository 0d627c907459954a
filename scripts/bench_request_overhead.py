"""The service's own Python cost per classify request, with and without ``ClassifyShortcut``.

Drives the ASGI app in this process (no sockets, no uvicorn) with the benchmark's multipart
upload of a 640x480 JPEG, decoding and ONNX Runtime stubbed out (a cached decode, fixed
probabilities), so what is left is routing, multipart parsing, batching hand-offs, top-k, the
response, logging and metrics. Prints CPU microseconds per request (all threads) for the app as
served and for the same app without the shortcut (requests then go through FastAPI's router).

Usage::

    python scripts/bench_request_overhead.py [--requests 3000] [--model imagenet-mobilenetv2]
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


async def cost_per_request(shortcut: bool, model: str, requests: int) -> float:
    """CPU seconds per request through the whole app (``shortcut=False``: without it)."""
    import service.pipeline
    from service.app import create_app
    from service.imaging import prepare
    from service.routes.classify import ClassifyShortcut
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
    while not app.state.repository.ready:
        await asyncio.sleep(0.05)
    version = app.state.repository.get(model)
    jpeg = make_jpeg()
    decoded = prepare(jpeg, version.input, 10**9)
    probabilities = version.infer(decoded.array[None])
    service.pipeline.prepare = lambda *_: decoded  # type: ignore[assignment]
    version.__dict__["infer"] = lambda batch, alone=None: np.repeat(probabilities, len(batch), 0)

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
    await lifespan.put({"type": "lifespan.shutdown"})
    await startup
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--model", default="imagenet-mobilenetv2", help="a model in models/")
    args = parser.parse_args()
    for shortcut in (True, False):
        cost = asyncio.run(cost_per_request(shortcut, args.model, args.requests))
        label = "as served (ClassifyShortcut)" if shortcut else "through FastAPI's router"
        print(f"{label:>30}: {cost * 1e6:6.0f} us of CPU per request")


if __name__ == "__main__":
    main()
