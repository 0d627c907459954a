"""The service against the server a user would write by hand, on the same model file.

Starts ``handwritten_server.py`` (FastAPI + uvicorn + ONNX Runtime, one sync endpoint) and the
service (one worker, this host's tuning cache if ``--env CONVSERVE_TUNING_DIR=...`` says so)
side by side on one model each, and drives them in turns, A B B A A B ..., with
``bench_service.py``'s client and the model's kind of image (the MNIST digit PNG, the FER face
crop, the 640x480 JPEG photo: ``bench_request_overhead.image_for``). Each round gives a ratio
measured under the same load; the medians are printed, with the server's CPU per request.

Usage::

    python scripts/bench_handwritten.py \
        [--models mnist-lenet5,fer-minixception,imagenet-mobilenetv2] [--clients 1,32]
        [--seconds 5] [--rounds 4] [--env NAME=VALUE]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_ab import compare  # noqa: E402
from bench_service import machine  # noqa: E402
from service_process import start_service  # noqa: E402


def start_handwritten(version_dir: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "handwritten_server.py"),
                                str(version_dir), "--port", str(port)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the hand-written server did not start")


def default_version(model: str) -> Path:
    pin = ROOT / "models" / model / "default_version"
    if pin.exists():
        return ROOT / "models" / model / pin.read_text().strip()
    return max((p for p in (ROOT / "models" / model).iterdir() if p.name.isdigit()),
               key=lambda p: int(p.name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist-lenet5,fer-minixception,imagenet-mobilenetv2")
    parser.add_argument("--clients", default="1,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the service (repeatable)")
    args = parser.parse_args()
    print(f"# {machine()}; one worker each, "
          f"{args.rounds} rounds of {args.seconds:g} s", flush=True)
    env = {"CONVSERVE_LOG_LEVEL": "warning", **dict(e.split("=", 1) for e in args.env)}
    work = Path(tempfile.mkdtemp(prefix="convserve-handwritten-"))
    try:
        for model in args.models.split(","):
            version = default_version(model)
            compare(work, model, {
                "hand-written": lambda _, port, version=version: start_handwritten(version, port),
                "convserve": lambda models, port: start_service(models, port, env,
                                                                log=subprocess.DEVNULL)},
                args.clients, args.rounds, args.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
