"""``convserve tune``: measure each classifier's batch cap and thread layout on this host and
cache them for the next start (``service/tuning.py`` reads them at load).

An explicit command rather than a background task at start-up: a measurement taken while the
service answers requests times a loaded machine (runs 3-5x slower on a busy host, and the
cheapest batch size flips between runs), and it would take the cores from the requests it
measures. Run it where nothing else runs on the serving hardware: a Kubernetes init container
with the pod's CPU limit and a volume for ``CONVSERVE_TUNING_DIR``, or the image build when it
runs on the serving hardware (another CPU gives another key, and the service falls back to
``serving.json``). Until it has run, the service serves at once with the shipped
``serving.json`` or the defaults.

Per classifier (on its execution provider, with the settings the service would use):

* the **batch cap**: ms of ONNX Runtime per image at 1, 2, 4, ... ``CONVSERVE_MAX_BATCH_SIZE``,
  the median of five rounds (``service.batch_sizes.measure``), and the size with the cheapest
  image; on a GPU the same, over the padded sizes;
* on a CPU, the **thread layout**: a lone batch-1 run's median time at 1, 2, 4, ... cores
  threads (the fastest is applied to a lone request's run), and images/s with N runs in flight
  at once of cores / N threads each (advice for ``CONVSERVE_INSTANCES``, shown, not applied).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.batch_sizes import measure
from service.errors import SettingsError
from service.model_version import ModelVersion
from service.repository import ModelRepository
from service.runtime import Session, thread_session
from service.settings import Settings, load_settings
from service.tuning import (
    CPU,
    ThreadLayout,
    TunedFigures,
    cache_file,
    cpu_name,
    read_cached,
    write_cached,
)

COMMAND_LINE = "convserve tune"


@dataclass(frozen=True)
class Outcome:
    """What ``convserve tune`` did for one version."""

    key: str  # name/version
    figures: TunedFigures
    file: Path
    measured: bool  # False: the cache already held figures for this key


def thread_options(cores: int) -> list[int]:
    """1, 2, 4, ... below ``cores``, then ``cores``."""
    return sorted({*(1 << i for i in range(cores.bit_length()) if 1 << i < cores), cores})


ROUNDS = 5  # each option's time is split into this many turns, the options taking turns


def lone_latency_ms(version: ModelVersion, settings: Settings, options: list[int],
                    seconds: float) -> dict[int, float]:
    """Median ms of a batch-1 run alone on a session of each of ``options`` threads, the
    options taking turns (a host whose load drifts shifts them all alike)."""
    sessions = {t: thread_session(version.session.path, settings, t, spins=True)
                for t in options}
    feed = {version.input_name: version.zeros(1)}
    times: dict[int, list[float]] = {t: [] for t in options}
    for session in sessions.values():
        for _ in range(3):
            session.run(feed, [version.output_name], alone=False)
    for _ in range(ROUNDS):
        for threads, session in sessions.items():
            deadline, runs = time.perf_counter() + seconds / ROUNDS, 0
            while runs < 2 or (time.perf_counter() < deadline and runs < 400):
                start = time.perf_counter()
                session.run(feed, [version.output_name], alone=False)
                times[threads].append((time.perf_counter() - start) * 1000)
                runs += 1
    return {t: round(statistics.median(times[t]), 4) for t in options}


def images_per_s(version: ModelVersion, settings: Settings, options: list[int], batch: int,
                 seconds: float) -> dict[int, float]:
    """Images/s with N threads each running batches of ``batch`` on one session of
    cores / N threads, as the batcher's lane runs them, for each N of ``options`` (taking
    turns, as above)."""
    sessions = {n: thread_session(version.session.path, settings,
                                  max(1, settings.worker_cores // n), spins=False)
                for n in options}
    feed = {version.input_name: version.zeros(batch)}
    images = dict.fromkeys(options, 0)
    elapsed = dict.fromkeys(options, 0.0)
    for session in sessions.values():
        session.run(feed, [version.output_name], alone=False)
    for _ in range(ROUNDS):
        for instances, session in sessions.items():
            counts = [0] * instances
            start = time.perf_counter()
            deadline = start + seconds / ROUNDS

            def loop(slot: int, session: Session = session, deadline: float = deadline,
                     counts: list[int] = counts) -> None:
                while time.perf_counter() < deadline:
                    session.run(feed, [version.output_name], alone=False)
                    counts[slot] += batch

            workers = [threading.Thread(target=loop, args=(i,)) for i in range(instances)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            elapsed[instances] += time.perf_counter() - start
            images[instances] += sum(counts)
    return {n: round(images[n] / elapsed[n], 1) for n in options}


def measure_threads(version: ModelVersion, settings: Settings, batch: int,
                    seconds: float) -> ThreadLayout:
    """The thread layouts of :mod:`service.tune`'s docstring, ``seconds`` per option."""
    options = thread_options(settings.worker_cores)
    latency = lone_latency_ms(version, settings, options, seconds)
    rates = images_per_s(version, settings, options, batch, seconds)
    return ThreadLayout(
        latency_ms_by_threads=latency, latency_threads=min(latency, key=lambda t: latency[t]),
        images_per_s_by_instances=rates,
        throughput_instances=max(rates, key=lambda n: rates[n]))


def tune_version(version: ModelVersion, settings: Settings, *, force: bool = False,
                 seconds: float = 0.5) -> Outcome:
    """The figures for ``version`` under this host's key: from the cache unless ``force``,
    else measured and written there."""
    assert version.batching is not None and version.batching.key is not None
    key = version.batching.key
    path = cache_file(settings, version.name, version.version, key)
    cached = None if force else read_cached(path, key)
    if cached is not None:
        return Outcome(version.key, cached, path, measured=False)
    hints = measure(version, settings.max_batch_size)
    threads = (measure_threads(version, settings, hints.cpu_max_batch_size, seconds)
               if key.provider == CPU else None)
    figures = TunedFigures(
        key=key, max_batch_size=hints.cpu_max_batch_size, batch_costs_ms=hints.cpu_batch_costs_ms,
        threads=threads,
        measured={"command": COMMAND_LINE, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
                  "machine": key.device if key.provider == CPU else f"{key.device}, "
                  f"{cpu_name()}", "rounds": 5, "seconds_per_thread_option": seconds})
    try:
        write_cached(path, figures)
    except OSError as exc:
        raise SettingsError(f"cannot write the tuning cache {path}: {exc.strerror or exc}; set "
                            "CONVSERVE_TUNING_DIR (or --tuning-dir) to a writable directory"
                            ) from None
    return Outcome(version.key, figures, path, measured=True)


def tune_repository(settings: Settings, *, only: str | None = None, force: bool = False,
                    seconds: float = 0.5) -> tuple[list[Outcome], dict[str, str]]:
    """Load every model under ``settings.models_dir`` and tune each classifier (``only``: one
    model). Returns the outcomes and the versions that failed to load, with why."""
    repository = ModelRepository(settings)
    failed = repository.scan().failed
    outcomes = [tune_version(version, settings, force=force, seconds=seconds)
                for version in repository.all_versions()
                if version.batching is not None and version.batching.key is not None
                and (only is None or version.name == only)]
    return outcomes, {str(key): str(reason) for key, reason in failed.items()}


def describe(outcome: Outcome) -> str:
    figures = outcome.figures
    costs = ", ".join(f"{size}: {ms:.3f}" for size, ms in figures.batch_costs_ms.items())
    line = (f"{outcome.key}: {'measured' if outcome.measured else 'cached'}; batch cap "
            f"{figures.max_batch_size} (ms per image by size: {costs})")
    if figures.threads:
        layout = figures.threads
        line += (f"; lone run {layout.latency_threads} thread(s) ("
                 + ", ".join(f"{t}: {ms:.3f} ms" for t, ms in layout.latency_ms_by_threads.items())
                 + f"); instances {layout.throughput_instances} ("
                 + ", ".join(f"{n}: {r:.0f}/s" for n, r in layout.images_per_s_by_instances.items())
                 + ")")
    return f"{line} -> {outcome.file}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=Path,
                        help="models directory (CONVSERVE_MODELS_DIR, default ./models)")
    parser.add_argument("--tuning-dir", type=Path,
                        help="cache directory (CONVSERVE_TUNING_DIR, default "
                             "~/.cache/convserve/tuning)")
    parser.add_argument("--only", help="just this model name")
    parser.add_argument("--force", action="store_true",
                        help="measure again even where the cache holds figures for this host")
    parser.add_argument("--seconds", type=float, default=0.5,
                        help="time per thread layout tried (0.5)")


def run(args: argparse.Namespace) -> int:
    overrides = {key: value for key, value in
                 (("models_dir", args.models), ("tuning_dir", args.tuning_dir)) if value}
    settings = load_settings(**overrides)
    outcomes, failed = tune_repository(settings, only=args.only, force=args.force,
                                       seconds=args.seconds)
    for key, reason in failed.items():
        sys.stderr.write(f"{key} did not load: {reason}\n")
    for outcome in outcomes:
        sys.stdout.write(describe(outcome) + "\n")
    if args.only and not outcomes:
        sys.stderr.write(f"no classifier named {args.only!r} under {settings.models_dir}\n")
        return 1
    return 1 if failed else 0


COMMAND = ("measure batch sizes and threads on this host, cached for the next start",
           add_arguments, run)
