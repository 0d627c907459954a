"""What a process keeps after decoding big images, and what one photo costs to prepare, under
three allocator settings.

Decodes four big PNGs (7000x7000, 3000x5000, 20x60000, 6000x2000 RGBA) with
:func:`service.imaging.prepare` in two threads, as the decode pool does, three rounds, keeping
a few thousand small arrays alive between rounds (as a serving process keeps its own), and prints
the RSS after each round; then the CPU milliseconds per ``prepare`` of a 640x480 JPEG photo for
MobileNetV2 (best of five runs of 300). Settings: glibc's default; ``mmap-only``, the mmap
threshold fixed at 1 MiB and nothing else; ``fixed``, :func:`service.memory.fix_mmap_threshold`
(what ``convserve serve`` calls at start-up).

Usage::

    python scripts/measure_retained_memory.py          # all three, each in a fresh process
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise KeyError("VmRSS")


def run(mode: str) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
    import numpy as np
    from bench_service import make_jpeg
    from hardening_probe import blank_png

    from service import imaging, memory

    if mode == "fixed":
        memory.fix_mmap_threshold()
    elif mode == "mmap-only":
        memory.fix_mmap_threshold(1024 * 1024, trim=None)
    spec = imaging.InputSpec(224, 224, 3)
    images = [blank_png(7000, 7000), blank_png(3000, 5000), blank_png(20, 60000),
              blank_png(6000, 2000)]
    figures = [f"start {rss_mib()}"]
    kept = []
    with ThreadPoolExecutor(2) as pool:
        for round_ in range(3):
            list(pool.map(lambda data: imaging.prepare(data, spec, 50_000_000), images))
            kept.append([np.zeros(1000 + i) for i in range(2000)])
            figures.append(f"round {round_ + 1} {rss_mib()}")
    photo = make_jpeg()
    mobilenet = imaging.InputSpec(224, 224, 3, method="shorter-side-center-crop", shorter_side=256)
    costs = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(300):
            imaging.prepare(photo, mobilenet, 50_000_000)
        costs.append((time.process_time() - start) / 300 * 1e3)
    print(f"{mode:9}: RSS MiB " + ", ".join(figures)
          + f"; 640x480 JPEG prepare {min(costs):.2f} ms CPU", flush=True)


def main() -> None:
    if len(sys.argv) > 1:
        run(sys.argv[1])
        return
    for mode in ("default", "mmap-only", "fixed"):
        subprocess.run([sys.executable, __file__, mode], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
