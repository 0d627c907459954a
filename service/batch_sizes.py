"""The CPU batch size of each classifier, measured once and stored beside its ``model.json``.

On a CPU a bigger batch is not always cheaper per image: MobileNetV2 and EfficientNet-Lite0 cost
more per image at 4 than at 1-2 (activations spill the L2 cache), ResNet-18 less (its weights are
read once per run). Timing this at every load made ``max_batch`` differ from load to load where
two sizes are close, so it is measured once, on the serving machine, by this command::

    python -m service.batch_sizes --models models [--write]

which prints each classifier's cost per image at 1, 2, 4, ... ``CONVSERVE_MAX_BATCH_SIZE`` and,
with ``--write``, stores the cheapest size in ``models/<name>/<version>/serving.json``
(:class:`model_format.ServingHints`). The repository reads that file at load: a
classifier without one is batched up to ``CONVSERVE_MAX_BATCH_SIZE``. docs/service-architecture.md
gives the figures measured for the shipped models. ``convserve tune`` (service/tune.py) measures
the same on the serving host and caches it outside ``models/``, where it wins over serving.json
(docs/tuning.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from model_format import SERVING_FILE, ServingHints, Task
from service.model_version import ModelVersion
from service.repository import ModelRepository
from service.runtime import padded_batch_sizes
from service.settings import load_settings
from service.tuning import cpu_name

# The batcher's own CPU per run beyond ONNX Runtime (thread hand-offs, stacking, posting the
# results), measured with a model that does nothing (docs/service-architecture.md).
RUN_OVERHEAD_MS = 0.025


def measure_batch_costs(version: ModelVersion, max_batch_size: int, runs: int = 3,
                        ) -> dict[int, float]:
    """Milliseconds of ONNX Runtime per image at each of 1, 2, 4, ... ``max_batch_size`` (the
    best of ``runs`` runs on zeros, after one untimed run), on the session the batcher uses."""
    costs = {}
    for size in padded_batch_sizes(max_batch_size):
        feed = {version.input_name: version.zeros(size)}
        version.session.run(feed, [version.output_name], alone=False)
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            version.session.run(feed, [version.output_name], alone=False)
            best = min(best, time.perf_counter() - start)
        costs[size] = best * 1000 / size
    return costs


def cheapest_batch(costs: dict[int, float], overhead_ms: float = RUN_OVERHEAD_MS) -> int:
    """The batch size with the cheapest image, counting the batcher's overhead per run (on a
    tie, the larger). No margin for the larger sizes: under load they cost more than alone
    (decoding shares the caches), which favours the smaller size where the two are close."""
    return min(costs, key=lambda size: (costs[size] + overhead_ms / size, -size))


def measure(version: ModelVersion, max_batch_size: int, rounds: int = 5) -> ServingHints:
    """Each size's cost per image: the median over ``rounds`` rounds of
    :func:`measure_batch_costs`, and the cheapest size."""
    samples = [measure_batch_costs(version, max_batch_size) for _ in range(rounds)]
    costs = {size: round(sorted(s[size] for s in samples)[rounds // 2], 4) for size in samples[0]}
    return ServingHints(
        cpu_max_batch_size=cheapest_batch(costs), cpu_batch_costs_ms=costs,
        measured={"command": "python -m service.batch_sizes --write",
                  "date": datetime.now(UTC).strftime("%Y-%m-%d"),
                  "machine": _machine(),
                  "rounds": rounds, "max_batch_size": max_batch_size})


def _machine() -> str:
    """The CPU's model name and core count."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    """Measure every CPU classifier under ``--models``; ``--write`` stores serving.json."""
    parser = argparse.ArgumentParser(prog="python -m service.batch_sizes",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--only", help="just this model name")
    parser.add_argument("--max-batch-size", type=int, default=4, help="largest size tried (4)")
    parser.add_argument("--write", action="store_true", help="write serving.json files")
    args = parser.parse_args(argv)
    repository = ModelRepository(load_settings(models_dir=args.models, providers="CPU",
                                               max_batch_size=args.max_batch_size))
    failed = repository.scan().failed
    for key, reason in failed.items():
        sys.stderr.write(f"{key} did not load: {reason}\n")
    for version in repository.all_versions():
        if (args.only and version.name != args.only) or version.task != Task.CLASSIFICATION:
            continue
        hints = measure(version, args.max_batch_size)
        sys.stdout.write(f"{version.key}: {json.dumps(hints.cpu_batch_costs_ms)} ms per "
                         f"image -> {hints.cpu_max_batch_size}\n")
        if args.write:
            (version.path / SERVING_FILE).write_text(hints.model_dump_json(indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
