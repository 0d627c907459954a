"""CPU per classify request with and without each change to the light path, interleaved.

A whole request (multipart parsing, decoding, the batcher, ONNX Runtime, the answer, metrics)
through the ASGI app in this process, no sockets, one request after another: the server's own
cost, without the load generator's or the network's. Each change is a *variant*: its own app
(settings) and module switches, set before each of its turns. The variants take turns in
short rounds, so that a machine whose load drifts shifts them alike; the medians of the rounds
and the per-round ratios to the first variant are printed. CPU time (``time.process_time``,
every thread) is steadier than wall time on a loaded machine; wall time is printed too.

Variants (``--variants``, the first is the reference):

* ``baseline``: PNG decoding in the pool, the shipped serving.json (lone runs on every core);
* ``inline-png``: a small PNG decoded on the event loop (``service.pipeline.INLINE_PNG_PIXELS``);
* ``tuned``: ``inline-png`` plus this host's tuning cache (``convserve tune``: LeNet-5's lone
  runs on one thread, measured fastest here);
* ``inline-run``: ``tuned`` plus a *proposal not in the service* (patched in here, to measure
  it): a lone request for a model whose run costs under 0.1 ms (its measured batch costs) runs
  on the event loop when its lane is idle, skipping the two thread hand-offs to and from the
  batcher's inference thread.

Usage::

    python scripts/bench_path_changes.py [--model mnist-lenet5] [--requests 1000] [--rounds 6]
        [--variants baseline,inline-png,tuned]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
from bench_request_overhead import image_for  # noqa: E402
from bench_service import build_request  # noqa: E402

import service.pipeline  # noqa: E402
from service.batching import Batcher  # noqa: E402
from service.http.app import create_app  # noqa: E402
from service.settings import load_settings  # noqa: E402

App = Callable[..., Any]
INLINE_PNG = getattr(service.pipeline, "INLINE_PNG_PIXELS", 0)  # 0: a tree without it


def switches(variant: str) -> None:
    """Set the module switches of ``variant``."""
    service.pipeline.INLINE_PNG_PIXELS = 0 if variant == "baseline" else INLINE_PNG
    Batcher.submit_many = _inline_submit if variant == "inline-run" else _SUBMIT  # type: ignore


_SUBMIT = Batcher.submit_many


async def _inline_submit(self: Batcher, version: Any, arrays: list[np.ndarray],
                         finish: Callable[[np.ndarray], Any] | None = None) -> list[Any]:
    """The ``inline-run`` proposal: run a tiny model's lone request on the event loop."""
    lane = self._lanes.get(id(version))
    tiny = 0 < version.batch_costs.get(1, 1.0) < 0.1
    if (not tiny or lane is None or lane.pending or lane.running or lane.items
            or len(arrays) > lane.max_batch):
        return await _SUBMIT(self, version, arrays, finish)
    outputs = version.infer(np.stack(arrays), True)
    return [finish(row) if finish else row for row in outputs]


class Client:
    """One app, driven through ASGI: lifespan started, requests sent one after another."""

    def __init__(self, app: App, request: bytes) -> None:
        self.app = app
        head, _, self.body = request.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.path, _, self.query = lines[0].split(b" ")[1].partition(b"?")
        self.headers = [(k.lower(), v) for k, v in (line.split(b": ", 1) for line in lines[1:])]
        self.lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.state: dict[str, Any] = {}

    async def start(self) -> None:
        await self.lifespan.put({"type": "lifespan.startup"})

        async def ignore(_: Any) -> None:
            return None

        self.running = asyncio.create_task(self.app(
            {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state},
            self.lifespan.get, ignore))
        while await self.call(b"GET", b"/readyz", b"", []) != 200:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        await self.lifespan.put({"type": "lifespan.shutdown"})
        await self.running

    async def call(self, method: bytes, path: bytes, body: bytes,
                   headers: list[tuple[bytes, bytes]], query: bytes = b"") -> int:
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                        "method": method.decode(), "scheme": "http", "path": path.decode(),
                        "raw_path": path, "query_string": query, "root_path": "",
                        "headers": headers, "client": ("127.0.0.1", 50000),
                        "server": ("127.0.0.1", 8000), "state": dict(self.state)}, receive, send)
        return int(sent[0]["status"])

    async def classify(self) -> None:
        status = await self.call(b"POST", self.path, self.body, self.headers, self.query)
        assert status == 200, status


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="convserve-path-"))
    (work / "models").mkdir()
    os.symlink(ROOT / "models" / args.model, work / "models" / args.model)
    tuning = work / "tuning"
    variants = args.variants.split(",")
    if "tuned" in variants or "inline-run" in variants:
        from service.tune import tune_repository

        tune_repository(load_settings(models_dir=work / "models", tuning_dir=tuning,
                                      providers="CPU"), seconds=0.5)
    request = build_request("127.0.0.1", 8000, args.model, image_for(args.model))
    clients = {}
    for variant in variants:
        settings = load_settings(models_dir=work / "models", providers="CPU",
                                 log_level="warning",
                                 tuning_dir=tuning if variant in ("tuned", "inline-run")
                                 else work / "none")
        clients[variant] = Client(create_app(settings), request)
        await clients[variant].start()
        switches(variant)
        for _ in range(200):
            await clients[variant].classify()
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    for turn in range(args.rounds):
        for variant in variants[:: 1 if turn % 2 == 0 else -1]:
            switches(variant)
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            for _ in range(args.requests):
                await clients[variant].classify()
            cpu[variant].append((time.process_time() - start_cpu) * 1e6 / args.requests)
            wall[variant].append((time.perf_counter() - start_wall) * 1e6 / args.requests)
    for client in clients.values():
        await client.stop()
    reference = variants[0]
    for variant in variants:
        ratios = [c / r for c, r in zip(cpu[variant], cpu[reference], strict=True)]
        print(f"{args.model} {variant:>10}: {statistics.median(cpu[variant]):6.0f} us CPU, "
              f"{statistics.median(wall[variant]):6.0f} us wall per request (medians of "
              f"{args.rounds} rounds of {args.requests}); CPU vs {reference} per round "
              f"{', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-lenet5")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--variants", default="baseline,inline-png,tuned,inline-run")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
