"""Per-host tuning figures: which batch cap and thread layout a classifier runs with, and where
they came from.

A classifier's best batch size and thread count depend on the host, not on the model alone:
MobileNetV2 costs 3.9 ms per image on one 2-core CPU and 6.4 ms on another, and the cheapest
batch size differs with them. ``convserve tune`` (``service/tune.py``) measures them on the host
itself and stores them in a cache directory (``CONVSERVE_TUNING_DIR``, by default
``~/.cache/convserve/tuning``; never under ``models/``, which may be read-only), one file per
model version and :class:`TuningKey`: what decides the answer (the CPU model and the cores the
worker may use, or the GPU model; ONNX Runtime's version and provider; the graph's sha256; the
threads per run and the largest batch tried). A key that changes (another CPU, a new
onnxruntime, a re-exported graph, other thread settings) names another file, so the old figures
are not used and the next ``convserve tune`` measures again.

At load (:func:`batching_in_force`) a version takes, in this order: the host cache's figures
for its key, the shipped ``serving.json`` (CPU only), or the default
(``CONVSERVE_MAX_BATCH_SIZE``). ``GET /v1/models`` shows which, as :class:`Batching`. A cache
file that does not parse is ignored with a warning, never fatal.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_format import SERVING_FILE, ServingHints, load_serving_hints
from service.runtime import ORT_VERSION, Session
from service.schemas import BatchingInfo
from service.settings import Settings

logger = logging.getLogger("convserve.tuning")

Source = Literal["host cache", "serving.json", "default"]
CPU = "CPUExecutionProvider"


class TuningKey(BaseModel):
    """What decides a version's tuned figures; any change means measuring again."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = Field(description="CPU model and the worker's usable cores, or the GPU model")
    provider: str = Field(description="ONNX Runtime execution provider the graph runs on")
    onnxruntime: str = Field(description="ONNX Runtime version")
    graph_sha256: str = Field(description="sha256 of the model's graph file")
    intra_threads: int = Field(description="threads per run (CPU: cores / instances)")
    max_batch_size: int = Field(description="the largest batch size tried")

    def digest(self) -> str:
        """A short, stable name for the key (part of the cache file's name)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class ThreadLayout(BaseModel):
    """The thread layouts measured on the CPU (``convserve tune``)."""

    latency_ms_by_threads: dict[int, float] = Field(
        description="median ms of a lone batch-1 run by ONNX Runtime threads")
    latency_threads: int = Field(description="the threads with the fastest lone run (applied: "
                                 "a lone request's run uses this many)")
    images_per_s_by_instances: dict[int, float] = Field(
        description="images/s with N runs in flight at once, cores / N threads each, batches "
                    "of the tuned cap")
    throughput_instances: int = Field(description="the instances with the most images/s "
                                      "(advice for CONVSERVE_INSTANCES, which is per process)")


class TunedFigures(BaseModel):
    """One cache file: the key measured under and the figures."""

    key: TuningKey
    max_batch_size: int = Field(gt=0, description="the batch size with the cheapest image")
    batch_costs_ms: dict[int, float] = Field(description="ms per image by batch size")
    threads: ThreadLayout | None = None  # CPU only
    measured: dict[str, Any] = Field(default_factory=dict, description="command, date, machine")


@dataclass(frozen=True)
class Batching:
    """The figures a version runs with, and where they came from."""

    source: Source
    max_batch_size: int
    batch_costs_ms: dict[int, float] = field(default_factory=dict)
    latency_threads: int | None = None  # host cache only: threads for a lone run
    throughput_instances: int | None = None  # host cache only: advice, not applied
    measured: dict[str, Any] = field(default_factory=dict)
    file: str | None = None  # the cache file or serving.json it was read from
    key: TuningKey | None = None  # None where the version is not tuned (not a classifier)


def tuning_dir(settings: Settings) -> Path:
    """The cache directory: ``CONVSERVE_TUNING_DIR`` with ``~`` expanded."""
    return settings.tuning_dir.expanduser()


def cpu_name() -> str:
    """The CPU's model name where Linux says, else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_name(proc: Path = Path("/proc/driver/nvidia/gpus")) -> str:
    """The first NVIDIA GPU's model as its driver reports it, or "GPU" when it does not say."""
    for info in sorted(proc.glob("*/information")) if proc.is_dir() else []:
        for line in info.read_text().splitlines():
            if line.startswith("Model:"):
                return line.split(":", 1)[1].strip()
    return "GPU"


def file_sha256(path: Path) -> str:
    """The file's sha256 (hex); remembered per path, size and mtime within the process (a
    reload reads an unchanged graph once: ~75 ms for EfficientNet-Lite0's 18.6 MB)."""
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tuning_key(session: Session, settings: Settings) -> TuningKey:
    """The key of ``session``'s graph as this process would run it."""
    provider = session.provider
    device = (f"{cpu_name()}, {settings.worker_cores} cores" if provider == CPU
              else gpu_name())
    return TuningKey(device=device, provider=provider, onnxruntime=ORT_VERSION,
                     graph_sha256=file_sha256(session.path),
                     intra_threads=settings.intra_threads if provider == CPU else 0,
                     max_batch_size=settings.max_batch_size)


def cache_file(settings: Settings, name: str, version: int, key: TuningKey) -> Path:
    """Where the figures of ``name/version`` under ``key`` are cached."""
    return tuning_dir(settings) / f"{name}-{version}-{key.digest()}.json"


def read_cached(path: Path, key: TuningKey) -> TunedFigures | None:
    """The figures in ``path`` if it holds figures for ``key``; a file that does not parse, or
    holds another key, is ignored with a warning (None)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("tuning cache %s cannot be read (%s): ignored", path, exc)
        return None
    try:
        figures = TunedFigures.model_validate_json(text)
    except ValidationError as exc:
        logger.warning("tuning cache %s is not valid (%s): ignored; `convserve tune` writes it "
                       "again", path, exc.errors()[0].get("msg", exc))
        return None
    if figures.key != key:
        logger.warning("tuning cache %s was measured under another key: ignored", path)
        return None
    return figures


def write_cached(path: Path, figures: TunedFigures) -> None:
    """Write ``figures`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(figures.model_dump(mode="json"), indent=1) + "\n")
    os.replace(partial, path)


def from_cache(figures: TunedFigures, path: Path, settings: Settings) -> Batching:
    threads = figures.threads
    return Batching(
        source="host cache", max_batch_size=min(settings.max_batch_size, figures.max_batch_size),
        batch_costs_ms=dict(figures.batch_costs_ms),
        latency_threads=threads.latency_threads if threads else None,
        throughput_instances=threads.throughput_instances if threads else None,
        measured=dict(figures.measured), file=str(path), key=figures.key)


def batching_in_force(name: str, version: int, directory: Path, session: Session,
                      settings: Settings) -> Batching:
    """A classifier's batching: the host cache's figures for its key, else the shipped
    ``serving.json`` (on a CPU), else ``CONVSERVE_MAX_BATCH_SIZE``.

    Raises:
        ModelFormatError: the shipped serving.json is invalid (as before there was a cache).
    """
    key = tuning_key(session, settings)
    path = cache_file(settings, name, version, key)
    figures = read_cached(path, key)
    if figures is not None:
        return from_cache(figures, path, settings)
    hints: ServingHints | None = load_serving_hints(directory) if key.provider == CPU else None
    if hints is not None:
        return Batching(source="serving.json",
                        max_batch_size=min(settings.max_batch_size, hints.cpu_max_batch_size),
                        batch_costs_ms=dict(hints.cpu_batch_costs_ms),
                        measured=dict(hints.measured or {}), file=str(directory / SERVING_FILE),
                        key=key)
    return Batching(source="default", max_batch_size=settings.max_batch_size, key=key)


def batching_info(batching: Batching) -> BatchingInfo:
    """``batching`` as ``GET /v1/models`` shows it."""
    return BatchingInfo(
        source=batching.source, max_batch_size=batching.max_batch_size,
        batch_costs_ms={str(size): ms for size, ms in batching.batch_costs_ms.items()},
        latency_threads=batching.latency_threads,
        throughput_instances=batching.throughput_instances, measured=batching.measured,
        file=batching.file, key=batching.key.model_dump() if batching.key else None)
