"""What a process keeps after decoding big images, with and without a fixed mmap threshold.

Decodes four big PNGs (7000x7000, 3000x5000, 20x60000, 6000x2000 RGBA) with
:func:`service.imaging.prepare` in two threads, as the decode pool does, three rounds, keeping
a few thousand small arrays alive between rounds (as a serving process keeps its own), and prints
the RSS after each round: once as glibc behaves by default, once after
:func:`service.memory.fix_mmap_threshold` (what ``convserve serve`` calls at start-up).

Usage::

    python scripts/measure_retained_memory.py          # both, each in a fresh process
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise KeyError("VmRSS")


def run(fixed: bool) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
    import numpy as np
    from hardening_probe import blank_png

    from service import imaging
    from service.memory import fix_mmap_threshold

    if fixed:
        fix_mmap_threshold()
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
    label = "fixed mmap threshold" if fixed else "glibc's default      "
    print(f"{label}: RSS MiB " + ", ".join(figures), flush=True)


def main() -> None:
    if len(sys.argv) > 1:
        run(sys.argv[1] == "fixed")
        return
    for mode in ("default", "fixed"):
        subprocess.run([sys.executable, __file__, mode], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
