"""Threads and memory of a served process across reloads that land during a request.

Each round sends a classify request's headers and half its body (the route has taken the
model's version and waits for the rest), rewrites the version's ``model.json`` (a reload
replaces the version), runs ``POST /v1/repository/reload``, then sends the rest of the body.
The server's thread count and resident memory are read from ``/proc/<pid>/status`` after each
round. A service whose late request revives the retired version's lane grows by its inference
threads and its ONNX Runtime sessions every round.

Usage::

    python scripts/probe_reload_leak.py [--rounds 6] [--model imagenet-mobilenetv2]

Run it from a checkout: it serves that checkout's code (``python -m service serve``) on a copy
of ``models/<model>``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path.cwd()  # the checkout that serves
sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_process import free_port, start_service  # noqa: E402


def _status(pid: int) -> tuple[int, float]:
    """The process's (threads, resident MB)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024


def _late_request(port: int, model: str, photo: bytes, reload: Callable[[], None]) -> str:
    boundary = "probe-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + photo + \
        f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /v1/models/{model}/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as client:
        client.sendall(head + body[:len(body) // 2])
        time.sleep(0.3)  # the route has taken its version and reads the body
        reload()
        client.sendall(body[len(body) // 2:])
        answer = client.recv(65536).decode("latin-1")
    return answer.split("\r\n", 1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--model", default="imagenet-mobilenetv2")
    args = parser.parse_args()
    photo = (ROOT / "samples" / "cat.jpg").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        shutil.copytree(ROOT / "models" / args.model, models / args.model)
        card = max((models / args.model).glob("*/model.json"))
        port = free_port()
        server = start_service(models, port, {"CONVSERVE_LOG_LEVEL": "warning"}, tree=ROOT)
        base = f"http://127.0.0.1:{port}"
        try:
            httpx.post(f"{base}/v1/models/{args.model}/classify",
                       files={"file": ("p.jpg", photo)}).raise_for_status()
            threads, rss = _status(server.pid)
            print(f"start: {threads} threads, {rss:.0f} MB resident")

            def reload() -> None:
                card.write_text(card.read_text())  # a new stamp: the version is replaced
                httpx.post(f"{base}/v1/repository/reload", timeout=120).raise_for_status()

            for round_ in range(1, args.rounds + 1):
                status = _late_request(port, args.model, photo, reload)
                httpx.post(f"{base}/v1/models/{args.model}/classify",
                           files={"file": ("p.jpg", photo)}).raise_for_status()
                threads, rss = _status(server.pid)
                print(f"reload {round_}: late request answered {status!r}; {threads} threads, "
                      f"{rss:.0f} MB resident")
        finally:
            server.terminate()
            server.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
