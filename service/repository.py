"""The model repository: ``models/<name>/<version>/`` directories -> loaded, warmed-up versions.

A :class:`ModelVersion` is immutable once loaded. Routes take a reference to one and keep it for
the whole request, so a reload that adds or removes versions never changes the version a request
in flight runs on. Names from URLs are checked against :data:`NAME_RE` and only ever used as
dictionary keys, never as paths.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import (
    ModelNotFound,
    NotReady,
    UnsupportedTask,
    VersionNotFound,
)
from service.imaging import InputSpec
from service.runtime import Session, create_session, padded_batch_sizes, warn_missing_providers
from service.settings import Settings

logger = logging.getLogger("convserve.repository")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")
CLASSIFIER_TASKS = ("classification", "expression")
DETECTOR_TASK = "face-detection"


@dataclass(eq=False)
class ModelVersion:
    """One loaded version of a model: its ``model.json``, ONNX sessions and input spec."""

    name: str
    version: int
    path: Path
    meta: dict[str, Any]
    sessions: dict[str, Session]  # "model" for single-graph models, else model.json's `files` keys
    input: InputSpec | None  # None for detectors whose input is not one image tensor
    load_seconds: float = 0.0
    stamp: int = 0  # model.json's mtime_ns when loaded
    input_name: str = "image"
    output_name: str = "probabilities"
    batch_sizes: tuple[int, ...] = ()  # on a GPU, batches are padded up to one of these, each
    # run by a session of its own (``Session.with_batch_sessions``): a few shapes, none changing
    max_batch: int | None = None  # classifiers: max_batch_size, or on a CPU the batch size with
    # the cheapest image (measured at load)
    batch_costs: dict[int, float] = field(default_factory=dict)  # ms per image, by batch size

    @property
    def key(self) -> str:
        """``name/version``: a unique, stable label."""
        return f"{self.name}/{self.version}"

    @property
    def task(self) -> str:
        return str(self.meta.get("task", "classification"))

    @functools.cached_property
    def labels(self) -> list[str]:
        """``model.json``'s class names, converted once (read on every request)."""
        return [str(label) for label in self.meta.get("labels", [])]

    @property
    def session(self) -> Session:
        """The single graph of a classifier."""
        return self.sessions["model"]

    @property
    def providers(self) -> list[str]:
        """Execution providers in use, main one first."""
        seen: dict[str, None] = {}
        for session in self.sessions.values():
            seen.update(dict.fromkeys(session.providers))
        return list(seen)

    def infer(self, batch: np.ndarray, alone: bool | None = None) -> np.ndarray:
        """Run a stacked ``[N, H, W, C]`` batch; returns ``[N, num_classes]`` probabilities.
        ``alone``: nothing else runs or waits, the run may use every core (None: decide from
        the runs in flight, see ``Session.run``)."""
        rows = len(batch)
        size = next((size for size in self.batch_sizes if size >= rows), rows)
        if size > rows:
            batch = np.concatenate([batch, np.zeros((size - rows, *batch.shape[1:]), batch.dtype)])
        out = self.session.run({self.input_name: batch}, [self.output_name], alone=alone)[0]
        return out[:rows]

    def zeros(self, size: int) -> np.ndarray:
        """A batch of ``size`` black images as the graph takes them (uint8 ``[N, H, W, C]``)."""
        spec = self.input
        assert spec is not None
        return np.zeros((size, spec.height, spec.width, spec.channels), np.uint8)

    def warm_up_thread(self) -> None:
        """Run each of ``batch_sizes`` once on the calling thread (an inference thread, before
        its first batch): each size's session picks its kernels on its first run (0.2-1.4 s on
        an H200), and ONNX Runtime's CUDA provider keeps per-thread state (its cuDNN and cuBLAS
        handles), stalls that would otherwise hit the first requests. Nothing to do on a CPU
        (``batch_sizes`` is empty)."""
        if self.input is None:
            return
        for size in self.batch_sizes:
            self.infer(self.zeros(size), False)

    def require_classifier(self) -> None:
        """Raises UnsupportedTask unless this version classifies whole images."""
        if self.task not in CLASSIFIER_TASKS or self.input is None:
            raise UnsupportedTask(
                f"model {self.name!r} is a {self.task} model and cannot classify images; "
                "use a classification model (GET /v1/models lists them)"
                + ("; faces go to POST /v1/expressions" if self.task == DETECTOR_TASK else ""))


@dataclass
class ScanResult:
    """What one scan of ``models_dir`` changed."""

    added: list[ModelVersion] = field(default_factory=list)
    removed: list[ModelVersion] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # "name/version" -> reason


def gpu_batch_sizes(sessions: dict[str, Session], settings: Settings) -> tuple[int, ...]:
    """The padded batch sizes where a graph runs off the CPU; () on the CPU (any size is free)."""
    if all(session.provider == "CPUExecutionProvider" for session in sessions.values()):
        return ()
    return padded_batch_sizes(settings.max_batch_size)


def _load_version(name: str, version: int, path: Path, settings: Settings) -> ModelVersion:
    start = time.perf_counter()
    meta_path = path / "model.json"
    stamp = meta_path.stat().st_mtime_ns
    meta = json.loads(meta_path.read_text())
    files = meta.get("files") or {"model": "model.onnx"}
    task = str(meta.get("task", "classification"))
    sessions = {}
    for key, filename in files.items():
        graph = path / Path(str(filename)).name  # never leave the version directory
        if not graph.is_file():
            raise FileNotFoundError(f"{graph} is missing (named in model.json)")
        # MTCNN's pyramid gives every run a new input shape, which a GPU provider re-plans
        # (0.8-1.3 s per expressions request on an H200 against ~0.1 s on its CPU): CPU only.
        # A lone classification run spins its threads (1-client p50 -1.7 ms for MobileNetV2);
        # MTCNN's and the expression model's lone runs share the cores with other requests' work
        # (spinning there cost 15% of expressions throughput at 8-16 clients).
        sessions[str(key)] = create_session(graph, settings, cpu_only=task == DETECTOR_TASK,
                                            solo_spins=task == "classification")
    spec = None
    if task != DETECTOR_TASK or "height" in (meta.get("input") or {}):
        spec = InputSpec.from_json(meta.get("input") or {})
    classifier = task in CLASSIFIER_TASKS and spec is not None
    batch_sizes = gpu_batch_sizes(sessions, settings) if classifier else ()
    if batch_sizes:
        sessions["model"] = sessions["model"].with_batch_sessions(batch_sizes, settings)
    loaded = ModelVersion(
        name=name, version=version, path=path, meta=meta, sessions=sessions, input=spec,
        stamp=stamp, input_name=str((meta.get("input") or {}).get("name", "image")),
        output_name=str((meta.get("output") or {}).get("name", "probabilities")),
        batch_sizes=batch_sizes, max_batch=settings.max_batch_size if classifier else None)
    if settings.warmup:
        _warm_up(loaded)
        # Whole-image classifiers on the CPU: the size with the cheapest image. (An expression
        # model keeps max_batch_size: a photo's faces go through one run.)
        if task == "classification" and spec is not None and not loaded.batch_sizes:
            loaded.batch_costs = measure_batch_costs(loaded, settings.max_batch_size)
            loaded.max_batch = cheapest_batch(loaded.batch_costs)
    loaded.load_seconds = time.perf_counter() - start
    return loaded


def measure_batch_costs(version: ModelVersion, max_batch_size: int, runs: int = 3,
                        ) -> dict[int, float]:
    """Milliseconds of ONNX Runtime per image at each of 1, 2, 4, ... ``max_batch_size`` (the
    best of ``runs`` runs on zeros, after one untimed run), on the session the batcher uses.

    On a CPU a bigger batch is not always cheaper per image: MobileNetV2 and EfficientNet-Lite0
    cost more at 4 than at 1-2 (activations spill the L2 cache), ResNet-18 less (its weights
    are read once per run)."""
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


# The batcher's own CPU per run beyond ONNX Runtime (thread hand-offs, stacking, posting the
# results): ~23 us on the 2-core development machine, measured with a model that does nothing.
RUN_OVERHEAD_MS = 0.025


def cheapest_batch(costs: dict[int, float], overhead_ms: float = RUN_OVERHEAD_MS) -> int:
    """The batch size with the cheapest image, counting the batcher's overhead per run (on a
    tie, the larger). No margin for the larger sizes: under load they cost more than alone
    (decoding shares the caches): MobileNetV2's service CPU per request is ~3% higher at 4 than
    at 1-2 (6.14-6.35 ms against 6.01-6.08)."""
    return min(costs, key=lambda size: (costs[size] + overhead_ms / size, -size))


def _warm_up(loaded: ModelVersion) -> None:
    """Run each graph once; for classifiers also check the output against the labels."""
    if loaded.task == DETECTOR_TASK or loaded.input is None:
        for session in loaded.sessions.values():
            session.warm_up(session.zeros_feed())
        return
    out = loaded.session.warm_up({loaded.input_name: loaded.zeros(1)}, [loaded.output_name])[0]
    if out.ndim != 2 or (loaded.labels and out.shape[1] != len(loaded.labels)):
        raise ValueError(f"output {loaded.output_name!r} has shape {list(out.shape)} but "
                         f"model.json lists {len(loaded.labels)} labels")


def _batching(version: ModelVersion) -> str:
    """How the version's batches are sized, for the load log line."""
    if version.batch_sizes:
        return f"; batches padded to {', '.join(map(str, version.batch_sizes))}"
    if version.batch_costs:
        costs = ", ".join(f"{size}: {ms:.2f}" for size, ms in version.batch_costs.items())
        return f"; batches of up to {version.max_batch} (ms per image by batch size: {costs})"
    return ""


def discover(root: Path) -> dict[tuple[str, int], Path]:
    """Complete version directories under ``root`` (those with a ``model.json``)."""
    found: dict[tuple[str, int], Path] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        if not NAME_RE.match(model_dir.name):
            logger.warning("skipping %s: model names are lower-case letters, digits and '-'",
                           model_dir)
            continue
        for version_dir in model_dir.iterdir():
            if (version_dir.is_dir() and VERSION_RE.match(version_dir.name)
                    and (version_dir / "model.json").is_file()):
                found[(model_dir.name, int(version_dir.name))] = version_dir
    return found


class ModelRepository:
    """Every loaded model version, reloadable while the service runs. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._versions: dict[tuple[str, int], ModelVersion] = {}
        self.failures: dict[str, str] = {}
        self._failed_stamps: dict[tuple[str, int], int] = {}  # not retried until model.json changes
        self.loaded = False  # True once the first scan has finished
        self._scan_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """The first scan is done and every version loaded and answered its warm-up run."""
        return self.loaded and not self.failures

    def scan(self) -> ScanResult:
        """Load new or changed versions and drop vanished ones. Blocking: call from a thread."""
        with self._scan_lock:
            result = ScanResult()
            found = discover(self.settings.models_dir)
            current = dict(self._versions)
            for gone in [k for k in current if k not in found]:
                result.removed.append(current.pop(gone))
            for (name, version), path in sorted(found.items()):
                existing = current.get((name, version))
                stamp = (path / "model.json").stat().st_mtime_ns
                if existing is not None and existing.stamp == stamp:
                    continue
                key = f"{name}/{version}"
                if self._failed_stamps.get((name, version)) == stamp:
                    result.failed[key] = self.failures[key]  # unchanged: still broken
                    continue
                try:
                    loaded = _load_version(name, version, path, self.settings)
                except Exception as exc:
                    result.failed[key] = f"{type(exc).__name__}: {exc}"
                    self._failed_stamps[(name, version)] = stamp
                    logger.error("model %s failed to load: %s", key, exc)
                    continue
                self._failed_stamps.pop((name, version), None)
                if existing is not None:
                    result.removed.append(existing)
                current[(name, version)] = loaded
                result.added.append(loaded)
                logger.info("loaded model %s version %s in %.2f s on %s%s", name, version,
                            loaded.load_seconds, ", ".join(loaded.providers), _batching(loaded))
            self._versions = current  # one assignment: readers see the old or the new dict
            self.failures = result.failed
            if result.added:
                in_use = {p for v in current.values() for p in v.providers}
                warn_missing_providers(list(self.settings.providers), in_use)
            self.loaded = True
            return result

    def names(self) -> list[str]:
        """Model names, sorted.

        Raises:
            NotReady: the first scan has not finished (an empty list would be a wrong answer).
        """
        if not self.loaded:
            raise NotReady("the models are still loading; retry when GET /readyz answers 200")
        return sorted({name for name, _ in self._versions})

    def versions(self, name: str) -> list[ModelVersion]:
        """Every loaded version of ``name``, newest first.

        Raises:
            ModelNotFound: no such model (or an invalid name).
            NotReady: the first scan has not finished.
        """
        if not self.loaded:
            raise NotReady("the models are still loading; retry when GET /readyz answers 200")
        if not NAME_RE.match(name):
            raise ModelNotFound(f"no model named {name!r}: names are lower-case letters, "
                                "digits and '-'; GET /v1/models lists the models")
        snapshot = self._versions
        found = sorted((v for (n, _), v in snapshot.items() if n == name),
                       key=lambda v: v.version, reverse=True)
        if not found:
            known = ", ".join(self.names()) or "none loaded"
            raise ModelNotFound(f"no model named {name!r}; models: {known}")
        return found

    def get(self, name: str, version: str | int | None = None) -> ModelVersion:
        """One version of ``name``: the highest when ``version`` is None.

        Raises:
            ModelNotFound, VersionNotFound, NotReady.
        """
        versions = self.versions(name)
        if version is None:
            return versions[0]
        wanted = str(version)
        for candidate in versions:
            if str(candidate.version) == wanted:
                return candidate
        have = ", ".join(str(v.version) for v in versions)
        raise VersionNotFound(f"model {name!r} has no version {wanted!r}; versions: {have}")

    def all_versions(self) -> list[ModelVersion]:
        """Every loaded version, by name then newest first."""
        return sorted(self._versions.values(), key=lambda v: (v.name, -v.version))
