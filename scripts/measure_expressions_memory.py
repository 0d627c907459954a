"""Peak and retained RSS, and time, of ``POST /v1/expressions`` on the photos of issue 13.

Starts ``convserve serve`` (CPU) over the shipped ``fer-minixception`` and ``face-mtcnn``, then
sends, one at a time:

- ``gif``: the 35-byte GIF that declares 7000x7000 pixels (under the pixel limit);
- ``group``: a 3200x1862 group photo built from the real ``multi-face`` photo (3x3 tiles of it,
  resized with Lanczos: 45 real faces);
- ``classify``: 64 copies of the GIF in one ``/v1/models/mnist-lenet5/classify`` request.

For each send it resets the server's peak RSS (``/proc/PID/clear_refs``), and reports the wall
time and the server's CPU time (all threads: steadier than wall time on a shared machine), the
status, the peak RSS during the request and the RSS 2 s after it returned (retained).

Usage::

    python scripts/measure_expressions_memory.py [--group-sends 8]
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from service_process import free_port, start_service  # noqa: E402


def big_gif(width: int = 7000, height: int = 7000) -> bytes:
    """A 35-byte GIF: a ``width`` x ``height`` logical screen holding one 1x1 frame."""
    screen = struct.pack("<6sHHBBB", b"GIF89a", width, height, 0x80, 0, 0)  # 2-colour table
    image = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    return screen + b"\x00\x00\x00\xff\xff\xff" + image + b"\x02\x02\x44\x01\x00;"


def group_photo(width: int = 3200, height: int = 1862) -> bytes:
    """A big group photo: the real multi-face photo tiled 3x3, resized, as a JPEG."""
    from PIL import Image

    from training.assets import fetch

    face = Image.open(fetch("multi-face")).convert("RGB")
    tiled = Image.new("RGB", (face.width * 3, face.height * 3))
    for row in range(3):
        for column in range(3):
            tiled.paste(face, (column * face.width, row * face.height))
    out = io.BytesIO()
    tiled.resize((width, height), Image.Resampling.LANCZOS).save(out, "JPEG", quality=90)
    return out.getvalue()


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send(client: httpx.Client, pid: int, url: str, files: list[tuple[str, tuple[str, bytes]]],
         what: str) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM (the peak) to the current RSS
    before = rss_kib(pid, "VmRSS")
    start, cpu = time.perf_counter(), cpu_seconds(pid)
    answer = client.post(url, files=files)
    seconds, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    peak = rss_kib(pid, "VmHWM")
    time.sleep(2.0)
    after = rss_kib(pid, "VmRSS")
    faces = answer.headers.get("x-faces", "-")
    print(f"{what:<28} status {answer.status_code} faces {faces:>3} time {seconds:6.2f} s "
          f"(CPU {cpu:6.2f} s)  "
          f"RSS before {before / 1024:7.0f} MiB  peak {peak / 1024:7.0f} MiB  "
          f"retained {after / 1024:7.0f} MiB", flush=True)
    if answer.status_code >= 400:
        print(f"  {answer.text[:300]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-sends", type=int, default=8)
    args = parser.parse_args()
    gif, group = big_gif(), group_photo()
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch)
        for name in ("fer-minixception", "face-mtcnn", "mnist-lenet5"):
            (models / name).symlink_to(ROOT / "models" / name, target_is_directory=True)
        port = free_port()
        server = start_service(models, port, {"CONVSERVE_LOG_LEVEL": "warning"},
                               log=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(timeout=300) as client:
                print(f"idle after start: RSS {rss_kib(server.pid, 'VmRSS') / 1024:.0f} MiB")
                send(client, server.pid, f"{url}/v1/expressions",
                     [("file", ("gif.gif", gif))], "expressions gif 7000x7000")
                for i in range(args.group_sends):
                    send(client, server.pid, f"{url}/v1/expressions",
                         [("file", ("group.jpg", group))], f"expressions group #{i + 1}")
                send(client, server.pid, f"{url}/v1/models/mnist-lenet5/classify",
                     [("file", (f"{i}.gif", gif)) for i in range(64)], "classify 64 gifs")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
