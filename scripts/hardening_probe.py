"""Issue 26's attacks against a real ``convserve serve``: how long each blocks the event loop,
and the server's peak and retained memory.

Starts the service (CPU) from a source tree (``--tree``, default this one: run it from an older
checkout's tree to measure before a fix) over the shipped ``mnist-lenet5``,
``imagenet-mobilenetv2`` and ``imagenet-efficientnet-lite0``, then runs each attack named on the
command line, one after the other. While an attack runs, a thread asks ``GET /healthz`` every
20 ms: the longest answer is the time the event loop was blocked. Before each attack the
server's peak RSS is reset (``/proc/PID/clear_refs``); "peak" is its RSS high-water mark during
the attack, "retained" its RSS 3 s after.

Attacks (the crafted inputs are functions here; the tests send the same bytes):

- ``jpeg``: a grey progressive JPEG whose last scan is repeated 450 times, under the size at
  which a JPEG was decoded on the event loop (128 KB, 1-2 cores), to classify;
- ``v2-outputs``: ``/v2`` infer of 64 zero 224x224 images as binary data, asking 100 times for
  the output with ``classification: 1000``;
- ``v2-json``: ``/v2`` infer of a 31 MB JSON body holding 10,000 28x28 images;
- ``thin``: a 1 x 49,000,000 RGBA PNG to classify; ``square``: a 7000 x 7000 RGBA PNG;
- ``explain``: 16 concurrent occlusion explanations of ``imagenet-efficientnet-lite0``, and
  meanwhile one 28x28 classify of ``mnist-lenet5`` (its time is reported);
- ``v2-one``: the ``v2-outputs`` request asking for the output once (a 3 MB answer);
- ``drip``: an upload sending one byte every 5 s, for at most 80 s: how long the server kept it;
- ``idle``: 1,100 connections that send nothing, then 20 ``GET /healthz`` (the server runs with
  ``ulimit -n 1024``): how they were answered;
- ``no-read``: 20 clients send ``v2-one`` requests and read nothing for 75 s: the server's
  RSS after 10 s and after 75 s, and how many answers it still held for them then.

Usage::

    python scripts/hardening_probe.py [--tree DIR] [ATTACK ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from measure_expressions_memory import rss_kib  # noqa: E402

MODELS = ("mnist-lenet5", "imagenet-mobilenetv2", "imagenet-efficientnet-lite0")


# The crafted inputs.

def repeated_scans_jpeg(side: int = 4800, repeats: int = 450) -> bytes:
    """A ``side`` x ``side`` grey progressive JPEG whose last scan is repeated ``repeats``
    times (each ~75 bytes): decoding passes over the picture once per scan."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (side, side), 0).save(out, "JPEG", progressive=True, quality=75)
    data = out.getvalue()
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * repeats + b"\xff\xd9"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def blank_png(width: int, height: int) -> bytes:
    """A transparent RGBA PNG of ``width`` x ``height``, zlib-compressed rows of zeros (a
    1 x 49,000,000 one is ~240 KB), written without holding the picture in memory."""
    row = b"\x00" * (1 + 4 * width)  # filter byte, then RGBA
    compressor = zlib.compressobj(9)
    parts = []
    rows_per_block = max(1, (4 << 20) // len(row))
    for start in range(0, height, rows_per_block):
        parts.append(compressor.compress(row * min(rows_per_block, height - start)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))


def v2_outputs_body(images: int = 64, copies: int = 100, side: int = 224) -> tuple[bytes, str]:
    """A binary ``/v2`` infer request asking ``copies`` times for the top-1000 strings; the
    body and its Inference-Header-Content-Length."""
    size = images * side * side * 3
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [images, side, side, 3], "datatype": "UINT8",
                    "parameters": {"binary_data_size": size}}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1000}}] * copies,
    }).encode()
    return header + bytes(size), str(len(header))


def v2_json_body(images: int = 10_000) -> bytes:
    """A JSON ``/v2`` infer request of ``images`` zero 28x28 grey images (31 MB)."""
    image = "[" + ",".join(["[" + ",".join(["[0]"] * 28) + "]"] * 28) + "]"
    data = "[" + ",".join([image] * images) + "]"
    return (f'{{"inputs":[{{"name":"image","shape":[{images},28,28,1],"datatype":"UINT8",'
            f'"data":{data}}}]}}').encode()


def digit_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (28, 28), 0).save(out, "PNG")
    return out.getvalue()


# Measuring.

class Heartbeat:
    """``GET /healthz`` every 20 ms from a thread; the longest answer."""

    def __init__(self, url: str) -> None:
        self.url, self.longest, self.stop = url, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=600) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    client.get(f"{self.url}/healthz")
                except httpx.HTTPError:
                    pass
                self.longest = max(self.longest, time.perf_counter() - start)
                time.sleep(0.02)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def measure(pid: int, url: str, name: str, attack: Callable[[], str]) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak restarts from the current RSS
    before = rss_kib(pid, "VmRSS")
    start = time.perf_counter()
    with Heartbeat(url) as beat:
        outcome = attack()
    seconds = time.perf_counter() - start
    peak = rss_kib(pid, "VmHWM")
    time.sleep(3)
    after = rss_kib(pid, "VmRSS")
    print(f"{name:<11} {outcome:<44} {seconds:7.1f} s  loop blocked {beat.longest:6.2f} s  "
          f"RSS {before / 1024:5.0f} -> peak {peak / 1024:5.0f} MiB "
          f"(+{(peak - before) / 1024:.0f}), retained {after / 1024:5.0f} MiB", flush=True)


server_pid = [0]  # the server's, for attacks that read its memory themselves


def attacks(url: str) -> dict[str, Callable[[], str]]:
    client = httpx.Client(timeout=900)

    def status(response: httpx.Response) -> str:
        text = response.text if response.status_code != 200 else ""
        return f"{response.status_code} {len(response.content) / 1e6:.1f} MB {text[:20]!r}"

    def classify(model: str, data: bytes) -> httpx.Response:
        return client.post(f"{url}/v1/models/{model}/classify", files={"file": ("x", data)})

    def v2_outputs() -> str:
        body, length = v2_outputs_body()
        return status(client.post(f"{url}/v2/models/imagenet-mobilenetv2/infer", content=body,
                                  headers={"Inference-Header-Content-Length": length,
                                           "Content-Type": "application/octet-stream"}))

    def v2_json() -> str:
        return status(client.post(f"{url}/v2/models/mnist-lenet5/infer", content=v2_json_body(),
                                  headers={"Content-Type": "application/json"}))

    def explain() -> str:
        photo = (ROOT / "samples" / "cat.jpg").read_bytes()

        def one(_: int) -> int:
            with httpx.Client(timeout=900) as own:
                return own.post(f"{url}/v1/models/imagenet-efficientnet-lite0/explain",
                                params={"method": "occlusion"},
                                files={"file": ("cat.jpg", photo)}).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = pool.map(one, range(16))
            time.sleep(1.0)
            start = time.perf_counter()
            digit = classify("mnist-lenet5", digit_png()).status_code
            waited = time.perf_counter() - start
            counts: dict[int, int] = {}
            for code in statuses:
                counts[code] = counts.get(code, 0) + 1
        return f"explains {counts}, classify {digit} in {waited:.2f} s"

    host, port = url.removeprefix("http://").split(":")

    def connect() -> socket.socket:
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return sock

    def v2_one() -> str:
        body, length = v2_outputs_body(copies=1)
        return status(client.post(f"{url}/v2/models/imagenet-mobilenetv2/infer", content=body,
                                  headers={"Inference-Header-Content-Length": length,
                                           "Content-Type": "application/octet-stream"}))

    def drip() -> str:
        with connect() as sock:
            sock.sendall(b"POST /v1/models/mnist-lenet5/classify HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
            start = time.monotonic()
            sock.settimeout(5)
            while time.monotonic() - start < 80:
                try:
                    sock.sendall(b"\x89")
                    answer = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    answer = b"(reset)"
                return f"closed after {time.monotonic() - start:.0f} s: {answer[:12]!r}"
        return "still open after 80 s"

    def idle() -> str:
        sockets, codes = [], {}
        try:
            for _ in range(1100):
                try:
                    sockets.append(socket.create_connection((host, int(port)), timeout=10))
                except OSError:
                    break
            time.sleep(1)
            for _ in range(20):
                try:
                    key: object = httpx.get(f"{url}/healthz", timeout=5).status_code
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                codes[key] = codes.get(key, 0) + 1
        finally:
            for sock in sockets:
                sock.close()
        return f"{len(sockets)} open; healthz {codes}"

    def no_read() -> str:
        body, length = v2_outputs_body(copies=1)
        head = (f"POST /v2/models/imagenet-mobilenetv2/infer HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
                f"Inference-Header-Content-Length: {length}\r\n\r\n").encode()
        sockets = [connect() for _ in range(20)]
        for sock in sockets:
            sock.settimeout(300)
        with ThreadPoolExecutor(20) as pool:  # each body sent whole; no answer read
            list(pool.map(lambda sock: sock.sendall(head + body), sockets))
        time.sleep(10)
        held = rss_kib(server_pid[0], "VmRSS")
        time.sleep(65)
        later = rss_kib(server_pid[0], "VmRSS")
        whole = 0  # answers the server still held for their client, read to the end
        for sock in sockets:
            sock.settimeout(5)
            received = b""
            try:
                while chunk := sock.recv(1 << 20):
                    received += chunk
                    head, _, rest = received.partition(b"\r\n\r\n")
                    length = [line for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")]
                    if length and len(rest) >= int(length[0].split(b":")[1]):
                        whole += 1
                        break
            except OSError:
                pass
            sock.close()
        return (f"RSS {held / 1024:.0f} MiB at 10 s, {later / 1024:.0f} MiB at 75 s; "
                f"{whole}/20 answers still held")

    return {
        "v2-one": v2_one,
        "drip": drip,
        "idle": idle,
        "no-read": no_read,
        "jpeg": lambda: status(classify("mnist-lenet5", repeated_scans_jpeg())),
        "v2-outputs": v2_outputs,
        "v2-json": v2_json,
        "thin": lambda: status(classify("mnist-lenet5", blank_png(1, 49_000_000))),
        "square": lambda: status(classify("mnist-lenet5", blank_png(7000, 7000))),
        "explain": explain,
    }


def _file_limit() -> None:
    """The server's open files limit: 1024, as on the attacked host."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="source tree to serve from")
    parser.add_argument("names", nargs="*", help="attacks to run (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch)
        for name in MODELS:
            (models / name).symlink_to(ROOT / "models" / name, target_is_directory=True)
        sys.path.insert(0, str(ROOT / "scripts"))
        from service_process import free_port

        port = free_port()
        env = {**os.environ, "CONVSERVE_PROVIDERS": "CPU", "CONVSERVE_LOG_LEVEL": "warning",
               "PYTHONPATH": str(args.tree)}
        server = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port), "--models",
             str(models)], cwd=args.tree, env=env, stdout=subprocess.DEVNULL,
            preexec_fn=_file_limit)
        server_pid[0] = server.pid
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            print(f"serving {args.tree} (pid {server.pid}); idle RSS "
                  f"{rss_kib(server.pid, 'VmRSS') / 1024:.0f} MiB", flush=True)
            table = attacks(url)
            for name in args.names or list(table):
                measure(server.pid, url, name, table[name])
        finally:
            server.terminate()
            server.wait(60)


if __name__ == "__main__":
    main()
