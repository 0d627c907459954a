"""One loaded model version: its validated ``model.json``, its ONNX Runtime sessions, how its
batches are sized, and the warm-up run that proves it answers.

A :class:`ModelVersion` is immutable once loaded. Routes take a reference to one and keep it for
the whole request, so a reload (``service/repository.py``) that adds or removes versions never
changes the version a request in flight runs on.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model_format import (
    CAPABILITIES,
    CARD_FILE,
    Capability,
    ClassifierCard,
    DetectorCard,
    Task,
    load_card,
)
from service import layers
from service.errors import UnsupportedTask
from service.imaging import InputSpec
from service.runtime import Session, create_session, padded_batch_sizes
from service.settings import Settings
from service.tuning import Batching, batching_in_force


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
    batching: Batching | None = None  # classifiers: the figures in force and their source

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

    @functools.cached_property
    def capabilities(self) -> frozenset[Capability]:
        """What this version can be asked to do: its task's capabilities, less what its card
        rules out (a classifier whose ``explain.method`` is ``none`` is not explained)."""
        found = set(CAPABILITIES[Task(self.task)])
        if self.input is None:
            found -= {Capability.CLASSIFY, Capability.EXPRESSIONS, Capability.EXPLAIN,
                      Capability.FIRST_LAYER}
        card = self.card
        if isinstance(card, ClassifierCard) and card.explain and card.explain.method == "none":
            found.discard(Capability.EXPLAIN)
        return frozenset(found)

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def require(self, capability: Capability) -> None:
        """Raises UnsupportedTask (422, the same everywhere) unless this version can do
        ``capability``; the message says what the model is and where to go instead."""
        if self.can(capability):
            return
        raise UnsupportedTask(f"model {self.name!r} ({self.task}) {_CANNOT[capability]}")


# A lone run shorter than this gets no solo session unless the host cache says otherwise: with
# its threads spinning, LeNet-5's lone requests (0.02 ms runs) answered 7% of one client's
# requests 2.6-4.5 ms late (docs/service-architecture.md, performance notes).
SHORT_RUN_MS = 0.1

_CANNOT = {
    Capability.CLASSIFY: "cannot classify images: use a classification or expression model "
                         "(GET /v1/models lists each model's task); faces go to "
                         "POST /v1/expressions",
    Capability.EXPRESSIONS: "is not an expression model: use model=fer-minixception or another "
                            "model whose task is 'expression' (GET /v1/models)",
    Capability.DETECT_FACES: "is not a face detector: use detector=face-mtcnn or another model "
                             "whose task is 'face-detection' (GET /v1/models)",
    Capability.EXPLAIN: "cannot explain its answers (a face detector, or explain.method none in "
                        "its model.json); GET /v1/models shows each model's explain methods",
    Capability.FIRST_LAYER: "has no first convolution to show: only classifiers have one",
}


def gpu_batch_sizes(sessions: dict[str, Session], settings: Settings) -> tuple[int, ...]:
    """The padded batch sizes where a graph runs off the CPU; () on the CPU (any size is free)."""
    if all(session.provider == "CPUExecutionProvider" for session in sessions.values()):
        return ()
    return padded_batch_sizes(settings.max_batch_size)


def load_version(name: str, version: int, path: Path, settings: Settings) -> ModelVersion:
    """Load, check and warm up ``path`` (``models/<name>/<version>/``): its validated
    ``model.json``, a session per graph, the batch sizes it runs at."""
    start = time.perf_counter()
    card_path = path / CARD_FILE
    stamp = card_path.stat().st_mtime_ns
    card = load_card(card_path)
    sessions = {}
    served = b""
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
        if key == "model" and isinstance(card, ClassifierCard):
            served = graph.read_bytes()  # what service/layers.py shows: never the file again
        sessions[key] = create_session(graph, settings, cpu_only=card.task == Task.FACE_DETECTION,
                                       solo_spins=card.task == Task.CLASSIFICATION,
                                       arena=card.task != Task.FACE_DETECTION)
    explain = card.explain if isinstance(card, ClassifierCard) else None
    if explain is not None and explain.file:
        head = path / Path(explain.file).name  # the class-activation-map head (service/explain.py)
        if not head.is_file():
            raise FileNotFoundError(f"{head} is missing (named in {card_path}, explain.file)")
        sessions["explain"] = create_session(head, settings)
    spec = InputSpec.from_card(card.input) if isinstance(card, ClassifierCard) else None
    # Whole-image classifiers: the size with the cheapest image and the lone run's threads, as
    # this host's tuning cache, else serving.json, says (service/tuning.py); on a GPU the cache
    # also bounds the padded sizes. An expression model keeps max_batch_size: a photo's faces go
    # through one run.
    batching = (batching_in_force(name, version, path, sessions["model"], settings)
                if card.task == Task.CLASSIFICATION and spec is not None else None)
    batch_sizes = gpu_batch_sizes(sessions, settings) if spec is not None else ()
    if batch_sizes and batching is not None and batching.source == "host cache":
        batch_sizes = padded_batch_sizes(batching.max_batch_size)
    if batch_sizes:
        sessions["model"] = sessions["model"].with_batch_sessions(batch_sizes, settings)
    loaded = ModelVersion(
        name=name, version=version, path=path, card=card, sessions=sessions, input=spec,
        stamp=stamp, input_name=card.input.name,
        output_name=card.output.name if isinstance(card, ClassifierCard) else "probabilities",
        batch_sizes=batch_sizes, max_batch=settings.max_batch_size if spec is not None else None)
    if spec is not None:
        layers.remember(loaded, served)
    if batching is not None:
        loaded.batching = batching
        loaded.batch_costs = dict(loaded.batching.batch_costs_ms)
        loaded.max_batch = loaded.batching.max_batch_size
        if loaded.batching.latency_threads:
            sessions["model"] = sessions["model"].with_solo_threads(
                loaded.batching.latency_threads, settings, spins=True)
    if settings.warmup:
        _warm_up(loaded)
        if (batching is not None and batching.latency_threads is None
                and sessions["model"].solo is not None and _lone_run_is_short(loaded)):
            sessions["model"] = sessions["model"].with_solo_threads(settings.intra_threads,
                                                                    settings, spins=True)
            loaded.batching = dataclasses.replace(batching,
                                                  latency_threads=settings.intra_threads)
    loaded.load_seconds = time.perf_counter() - start
    return loaded


def _lone_run_is_short(loaded: ModelVersion) -> bool:
    """Whether one image's run on an instance's own threads takes under :data:`SHORT_RUN_MS`
    (median of five warm runs): too short for the solo session's extra threads to gain what
    waking them costs. Untuned graphs this short run lone requests on those threads instead."""
    feed, times = {loaded.input_name: loaded.zeros(1)}, []
    for _ in range(5):
        start = time.perf_counter()
        loaded.session.run(feed, [loaded.output_name], alone=False)
        times.append(time.perf_counter() - start)
        if times[-1] * 1e3 > 10 * SHORT_RUN_MS:  # a real graph: no need to look further
            return False
    return statistics.median(times) * 1e3 < SHORT_RUN_MS


def _warm_up(loaded: ModelVersion) -> None:
    """Run each graph once; for classifiers also check the output against the labels."""
    if loaded.task == Task.FACE_DETECTION or loaded.input is None:
        for session in loaded.sessions.values():
            session.warm_up(session.zeros_feed())
        return
    out = loaded.session.warm_up({loaded.input_name: loaded.zeros(1)}, [loaded.output_name])[0]
    if out.ndim != 2 or (loaded.labels and out.shape[1] != len(loaded.labels)):
        raise ValueError(f"output {loaded.output_name!r} has shape {list(out.shape)} but "
                         f"model.json lists {len(loaded.labels)} labels")


def int8_note(version: ModelVersion) -> str | None:
    """A warning when an int8 model runs off the CPU: ONNX Runtime's GPU providers run QDQ
    graphs with little or no int8 gain (docs/int8.md), so the float model is the better choice
    there. None for float models and on the CPU."""
    quantization = getattr(version.card, "quantization", None)
    provider = version.providers[0] if version.sessions else "CPUExecutionProvider"
    if quantization is None or provider == "CPUExecutionProvider":
        return None
    return (f"{version.key} is an int8 (QDQ) model running on {provider}, where int8 is "
            f"likely slower than float (not measured here); serve its float model "
            f"{quantization.source.name} on a GPU (docs/int8.md)")


def describe_batching(version: ModelVersion) -> str:
    """How the version's batches are sized, for the load log line."""
    if version.batch_sizes:
        return f"; batches padded to {', '.join(map(str, version.batch_sizes))}"
    if version.batch_costs:
        costs = ", ".join(f"{size}: {ms:.2f}" for size, ms in version.batch_costs.items())
        source = f", {version.batching.source}" if version.batching else ""
        return (f"; batches of up to {version.max_batch} (ms per image by batch size: {costs}"
                f"{source})")
    return ""
