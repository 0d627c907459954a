"""The model repository: ``models/<name>/<version>/`` directories -> loaded, warmed-up versions.

A :class:`ModelVersion` is immutable once loaded. Routes take a reference to one and keep it for
the whole request, so a reload that adds or removes versions never changes the version a request
in flight runs on. Names from URLs are checked against :data:`NAME_RE` and only ever used as
dictionary keys, never as paths.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.errors import (
    ModelNotFound,
    NotReady,
    UnsupportedTask,
    VersionNotFound,
)
from service.imaging import InputSpec
from service.model_format import (
    CARD_FILE,
    CLASSIFIER_TASKS,
    DETECTOR_TASK,
    NAME_RE,
    VERSION_RE,
    ClassifierCard,
    DetectorCard,
    load_card,
    load_serving_hints,
)
from service.runtime import Session, create_session, padded_batch_sizes, warn_missing_providers
from service.settings import Settings

logger = logging.getLogger("convserve.repository")

DEFAULT_FILE = "default_version"  # models/<name>/default_version: the version served by default

@dataclass(eq=False)
class ModelVersion:
    """One loaded version of a model: its validated ``model.json``, ONNX sessions, input spec."""

    name: str
    version: int
    path: Path
    card: ClassifierCard | DetectorCard
    sessions: dict[str, Session]  # "model" for single-graph models, else model.json's `files` keys
    input: InputSpec | None  # None for detectors whose input is not one image tensor
    load_seconds: float = 0.0
    stamp: int = 0  # model.json's mtime_ns when loaded
    input_name: str = "image"
    output_name: str = "probabilities"
    batch_sizes: tuple[int, ...] = ()  # on a GPU, batches are padded up to one of these, each
    # run by a session of its own (``Session.with_batch_sessions``): a few shapes, none changing
    max_batch: int | None = None  # classifiers: max_batch_size, or on a CPU the batch size with
    # the cheapest image as serving.json says (service/batch_sizes.py)
    batch_costs: dict[int, float] = field(default_factory=dict)  # serving.json: ms per image

    @property
    def key(self) -> str:
        """``name/version``: a unique, stable label."""
        return f"{self.name}/{self.version}"

    @property
    def task(self) -> str:
        return self.card.task

    @functools.cached_property
    def labels(self) -> list[str]:
        """``model.json``'s class names (read on every request)."""
        return list(self.card.labels)

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
        its first batch): each size's session picks its kernels on its first run (up to seconds
        on a GPU), and ONNX Runtime's CUDA provider keeps per-thread state (its cuDNN and cuBLAS
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
    card_path = path / CARD_FILE
    stamp = card_path.stat().st_mtime_ns
    card = load_card(card_path)
    sessions = {}
    for key, filename in card.graphs.items():
        graph = path / Path(filename).name  # never leave the version directory
        if not graph.is_file():
            raise FileNotFoundError(f"{graph} is missing (named in {card_path})")
        # MTCNN's pyramid gives every run a new input shape, which a GPU provider re-plans
        # (docs/service-architecture.md): CPU only. A lone classification run spins its threads
        # (it has the cores to itself); MTCNN's and the expression model's lone runs share the
        # cores with other requests' work, where spinning costs throughput. MTCNN's input shapes
        # change every run: no memory arena (it kept the largest run's memory for good;
        # docs/hardening.md).
        sessions[key] = create_session(graph, settings, cpu_only=card.task == DETECTOR_TASK,
                                       solo_spins=card.task == "classification",
                                       arena=card.task != DETECTOR_TASK)
    explain = card.explain if isinstance(card, ClassifierCard) else None
    if explain is not None and explain.file:
        head = path / Path(explain.file).name  # the class-activation-map head (service/explain.py)
        if not head.is_file():
            raise FileNotFoundError(f"{head} is missing (named in {card_path}, explain.file)")
        sessions["explain"] = create_session(head, settings)
    spec = InputSpec.from_card(card.input) if isinstance(card, ClassifierCard) else None
    batch_sizes = gpu_batch_sizes(sessions, settings) if spec is not None else ()
    if batch_sizes:
        sessions["model"] = sessions["model"].with_batch_sessions(batch_sizes, settings)
    loaded = ModelVersion(
        name=name, version=version, path=path, card=card, sessions=sessions, input=spec,
        stamp=stamp, input_name=card.input.name,
        output_name=card.output.name if isinstance(card, ClassifierCard) else "probabilities",
        batch_sizes=batch_sizes, max_batch=settings.max_batch_size if spec is not None else None)
    # Whole-image classifiers on the CPU: the size with the cheapest image, measured once and
    # stored in serving.json (service/batch_sizes.py). An expression model keeps max_batch_size:
    # a photo's faces go through one run.
    hints = load_serving_hints(path)
    if hints and card.task == "classification" and spec is not None and not batch_sizes:
        loaded.batch_costs = dict(hints.cpu_batch_costs_ms)
        loaded.max_batch = min(settings.max_batch_size, hints.cpu_max_batch_size)
    if settings.warmup:
        _warm_up(loaded)
    loaded.load_seconds = time.perf_counter() - start
    return loaded


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


def discover(root: Path, warn: bool = True) -> dict[tuple[str, int], Path]:
    """Complete version directories under ``root`` (those with a ``model.json``); ``warn``:
    log each directory skipped for its name."""
    found: dict[tuple[str, int], Path] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        if not NAME_RE.match(model_dir.name):
            if warn:
                logger.warning("skipping %s: model names are lower-case letters, digits and "
                               "'-'", model_dir)
            continue
        for version_dir in model_dir.iterdir():
            if (version_dir.is_dir() and VERSION_RE.match(version_dir.name)
                    and (version_dir / CARD_FILE).is_file()):
                found[(model_dir.name, int(version_dir.name))] = version_dir
    return found


def read_defaults(root: Path, names: set[str]) -> tuple[dict[str, int], dict[str, str]]:
    """The pinned default versions: ``models/<name>/default_version`` holding a version number.

    A model without the file serves its newest version. Returns the pins and, for files that do
    not hold a version number, ``"name/default_version" -> why``.
    """
    pins: dict[str, int] = {}
    bad: dict[str, str] = {}
    for name in sorted(names):
        path = root / name / DEFAULT_FILE
        if not path.is_file():
            continue
        text = path.read_text(errors="replace").strip()
        if VERSION_RE.match(text):
            pins[name] = int(text)
        else:
            bad[f"{name}/{DEFAULT_FILE}"] = (f"{path} holds {text[:20]!r}, not a version "
                                             "number: write one (e.g. 1) or delete the file to "
                                             "serve the newest version")
    return pins, bad


class ModelRepository:
    """Every loaded model version, reloadable while the service runs. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Loaded versions and pinned defaults, replaced together by one assignment.
        self._state: tuple[dict[tuple[str, int], ModelVersion], dict[str, int]] = ({}, {})
        self.failures: dict[str, str] = {}
        self._failed_stamps: dict[tuple[str, int], int] = {}  # not retried until model.json changes
        self.loaded = False  # True once the first scan has finished
        self._scan_lock = threading.Lock()

    @property
    def _versions(self) -> dict[tuple[str, int], ModelVersion]:
        return self._state[0]

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
                stamp = (path / CARD_FILE).stat().st_mtime_ns
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
            pins, bad = read_defaults(self.settings.models_dir, {name for name, _ in found})
            for name, version in pins.items():
                if (name, version) not in current:
                    have = ", ".join(str(v) for n, v in sorted(current) if n == name) or "none"
                    bad[f"{name}/{DEFAULT_FILE}"] = (
                        f"the default version {version} is not loaded (versions: {have}); "
                        f"fix {self.settings.models_dir / name / DEFAULT_FILE} or delete it to "
                        "serve the newest version")
            for key, why in bad.items():
                logger.error("%s: %s", key, why)
            result.failed.update(bad)
            self._state = (current, pins)  # one assignment: readers see old or new, never a mix
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
        return self._versions_of(name, self._state[0])

    def _versions_of(self, name: str, snapshot: dict[tuple[str, int], ModelVersion],
                     ) -> list[ModelVersion]:
        if not self.loaded:
            raise NotReady("the models are still loading; retry when GET /readyz answers 200")
        if not NAME_RE.match(name):
            raise ModelNotFound(f"no model named {name!r}: names are lower-case letters, "
                                "digits and '-'; GET /v1/models lists the models")
        found = sorted((v for (n, _), v in snapshot.items() if n == name),
                       key=lambda v: v.version, reverse=True)
        if not found:
            known = ", ".join(sorted({n for n, _ in snapshot})) or "none loaded"
            raise ModelNotFound(f"no model named {name!r}; models: {known}")
        return found

    def default_version(self, name: str) -> tuple[int, bool]:
        """The version served when none is named, and whether ``default_version`` pins it
        (else it is the newest). Raises like :meth:`versions`."""
        snapshot, pins = self._state
        newest = self._versions_of(name, snapshot)[0].version
        return (pins[name], True) if name in pins else (newest, False)

    def get(self, name: str, version: str | int | None = None) -> ModelVersion:
        """One version of ``name``: when ``version`` is None, the one ``default_version`` pins,
        else the newest.

        Raises:
            ModelNotFound, VersionNotFound, NotReady.
        """
        snapshot, pins = self._state
        versions = self._versions_of(name, snapshot)
        if version is None and name not in pins:
            return versions[0]
        wanted = str(version if version is not None else pins[name])
        for candidate in versions:
            if str(candidate.version) == wanted:
                return candidate
        have = ", ".join(str(v.version) for v in versions)
        if version is None:
            raise VersionNotFound(
                f"the default version {wanted} of model {name!r} is not loaded (versions: "
                f"{have}): name a version, or fix models/{name}/{DEFAULT_FILE}")
        raise VersionNotFound(f"model {name!r} has no version {wanted!r}; versions: {have}")

    def all_versions(self) -> list[ModelVersion]:
        """Every loaded version, by name then newest first."""
        return sorted(self._versions.values(), key=lambda v: (v.name, -v.version))
