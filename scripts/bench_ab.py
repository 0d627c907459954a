"""Two builds of the service, interleaved: requests/s and latency of a baseline vs this tree.

On a shared, loaded machine two runs minutes apart differ by more than most changes gain, so
this starts both servers side by side (each one worker, the same settings; the idle one costs
nothing) and drives them in turns, A B B A A B ..., with ``bench_service.py``'s client: each
round gives a ratio measured under the same load, and the medians of the rounds are printed.

The baseline is a git revision, checked out into a temporary worktree (``--baseline main``).

Usage::

    python scripts/bench_ab.py [--baseline main] [--models mnist-lenet5] [--clients 1,32]
        [--seconds 5] [--rounds 4] [--env NAME=VALUE] [--baseline-env NAME=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_request_overhead import image_for  # noqa: E402
from bench_service import cpu_seconds  # noqa: E402
from service_process import free_port, start_service  # noqa: E402


def start(tree: Path, models: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    """``python -m service serve`` from ``tree`` (its own code first on the path), ready;
    ``extra``: ``NAME=VALUE`` settings for this side only."""
    env = {"CONVSERVE_LOG_LEVEL": "warning", "PYTHONPATH": str(tree),
           **dict(item.split("=", 1) for item in extra)}
    return start_service(models, port, env, log=subprocess.DEVNULL, tree=tree)


def drive(port: int, pid: int, model: str, image: Path, clients: int, seconds: float) -> dict:
    """One client run; adds the server's CPU microseconds per request (warm-up included)."""
    cpu = cpu_seconds(pid)
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_service.py"), "--client", "--port",
         str(port), "--model", model, "--jpeg", str(image), "--concurrency", str(clients),
         "--seconds", str(seconds), "--warmup", "0.5"], capture_output=True, text=True,
        check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cpu_us"] = (cpu_seconds(pid) - cpu) * 1e6 / max(1, result["total"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare against")
    parser.add_argument("--models", default="mnist-lenet5")
    parser.add_argument("--clients", default="1,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for this tree's server only (repeatable)")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the baseline's server only (repeatable)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="convserve-ab-"))
    base = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=ROOT,
                   check=True, capture_output=True)
    try:
        for model in args.models.split(","):
            compare(work, model, {
                "baseline": lambda models, port: start(base, models, port, args.baseline_env),
                "this tree": lambda models, port: start(ROOT, models, port, args.env)},
                args.clients, args.rounds, args.seconds)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT,
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


Start = Callable[[Path, int], subprocess.Popen[bytes]]


def compare(work: Path, model: str, sides: dict[str, Start], clients: str, rounds: int,
            seconds: float) -> None:
    """Start both sides' servers on ``model`` (a models dir of its own under ``work``), drive
    them in turns at each client count, print one :func:`report` line per count, stop them."""
    models = work / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir()
    os.symlink(ROOT / "models" / model, models / model)
    image = work / "image"
    image.write_bytes(image_for(model))
    names = tuple(sides)
    servers: dict[str, subprocess.Popen[bytes]] = {}
    ports = {name: free_port() for name in names}
    try:
        for name, start_side in sides.items():
            servers[name] = start_side(models, ports[name])
        for count in map(int, clients.split(",")):
            results: dict[str, list[dict]] = {name: [] for name in names}
            for turn in range(rounds):
                for name in names[:: 1 if turn % 2 == 0 else -1]:
                    results[name].append(drive(ports[name], servers[name].pid, model, image,
                                               count, seconds))
            report(model, count, results, (names[0], names[1]))
        for server in servers.values():
            server.terminate()
            server.wait(30)
    finally:
        for server in servers.values():
            if server.poll() is None:
                server.kill()


def report(model: str, clients: int, results: dict[str, list[dict]],
           sides: tuple[str, str] = ("baseline", "this tree")) -> None:
    """One line: each side's medians, then the per-round ratios of the second to the first."""
    base, new = results[sides[0]], results[sides[1]]
    median = statistics.median
    ratios = [n["per_s"] / b["per_s"] for b, n in zip(base, new, strict=True)]
    cpu = [n["cpu_us"] / b["cpu_us"] for b, n in zip(base, new, strict=True)]
    line = {side: (f"{median(r['per_s'] for r in rows):7.0f}/s "
                   f"{median(r['cpu_us'] for r in rows):5.0f} us CPU/req p50 "
                   f"{median(r['p50_ms'] for r in rows):6.2f} ms p99 "
                   f"{median(r['p99_ms'] for r in rows):6.2f} ms")
            for side, rows in results.items()}
    print(f"{model}, {clients} client(s): {sides[0]} {line[sides[0]]} | {sides[1]} "
          f"{line[sides[1]]} | requests/s ratio per round "
          f"{', '.join(f'{r:.2f}' for r in ratios)} (median {median(ratios):.2f}); "
          f"server CPU per request ratio {', '.join(f'{r:.2f}' for r in cpu)} (median "
          f"{median(cpu):.2f}); p50 difference median "
          f"{median(n['p50_ms'] - b['p50_ms'] for b, n in zip(base, new, strict=True)):+.3f} ms",
          flush=True)


if __name__ == "__main__":
    main()
