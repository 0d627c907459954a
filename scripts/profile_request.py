"""Profile one classify request path with py-spy: where a worker's CPU goes per request.

Starts ``convserve serve`` (one worker) over one model, drives it with ``bench_service.py``'s
client at each concurrency in ``--clients`` (the model's kind of image, as
``bench_request_overhead.py`` picks it), records the server with ``py-spy record`` (all
``--gil``: only the thread holding the GIL, i.e. the Python work; ONNX Runtime and decoding
run without it) while the client runs, and prints the top
frames by own time and by inclusive time, as % of the samples, plus requests/s.

Usage::

    python scripts/profile_request.py [--model mnist-lenet5] [--clients 1,32] [--seconds 10]
        [--top 25] [--out DIR]   # DIR keeps the collapsed stacks (flame graph input)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_request_overhead import image_for  # noqa: E402
from service_process import free_port, start_service  # noqa: E402

Ranked = list[tuple[str, int]]


def top_frames(collapsed: Path, top: int) -> tuple[int, Ranked, Ranked]:
    """(samples, frames by own samples, frames by inclusive samples) of a collapsed-stack file."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        total += samples
        if frames:
            own[_short(frames[-1])] += samples
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += samples
    return total, own.most_common(top), inclusive.most_common(top)


def _short(frame: str) -> str:
    """``function (path/to/file.py:12)`` -> ``function (file.py)`` (lines merge)."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    shown = "/".join(parts[-2:]) if "site-packages" in parts or "service" in parts else Path(
        file).name
    return f"{name} ({shown})"


def profile(port: int, pid: int, model: str, image: Path, clients: int, seconds: float,
            out: Path) -> dict:
    collapsed = out / f"{model}-{clients}c.txt"
    spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                            "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                            "--output", str(collapsed), "--duration", str(int(seconds)), "--gil",
                            "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_service.py"), "--client", "--port",
         str(port), "--model", model, "--jpeg", str(image), "--concurrency", str(clients),
         "--seconds", str(seconds), "--warmup", "0.5"], capture_output=True, text=True,
        check=True)
    spy.wait()
    result = json.loads(client.stdout.strip().splitlines()[-1])
    result["collapsed"] = str(collapsed)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-lenet5")
    parser.add_argument("--clients", default="1,32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, help="keep the collapsed stacks here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="convserve-profile-"))
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    models = work / "models"
    models.mkdir()
    os.symlink(ROOT / "models" / args.model, models / args.model)
    image = work / "image"
    image.write_bytes(image_for(args.model))
    port = free_port()
    server = start_service(models, port, {"CONVSERVE_LOG_LEVEL": "warning"},
                           log=subprocess.DEVNULL)
    try:
        for clients in map(int, args.clients.split(",")):
            result = profile(port, server.pid, args.model, image, clients, args.seconds, out)
            total, own, inclusive = top_frames(Path(result["collapsed"]), args.top)
            print(f"\n## {args.model}, {clients} client(s): {result['per_s']:.0f} requests/s, "
                  f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms; {total} "
                  f"samples ({result['collapsed']})")
            print("own %   | inclusive % | frame")
            for frame, samples in own:
                print(f"{100 * samples / total:6.1f}  |             | {frame}")
            for frame, samples in inclusive:
                print(f"        | {100 * samples / total:10.1f}  | {frame}")
    finally:
        server.terminate()
        server.wait(30)
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
