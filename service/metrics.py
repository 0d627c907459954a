"""Prometheus metrics, named in the style of Triton's and Prometheus' conventions.

Each app owns its own :class:`CollectorRegistry`, so several apps (tests) never clash.

With ``serve --workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start (prometheus-client reads it at import): every worker writes its values to files there and
whichever worker answers the scrape renders the sum over all of them. Counters and histograms
add up, dead workers' counts included (they stay monotonic); the gauges say how they combine
over the live workers: queue depth adds up, ``model_ready`` is the lowest (1 only when every
worker that loaded the version serves it), ``model_info`` and load time the highest.

========================================== ========= =========================================
name                                       type      labels
========================================== ========= =========================================
convserve_requests_total                   counter   route, method, status
convserve_request_duration_seconds         histogram route (whole request, server side)
convserve_decode_duration_seconds          histogram model, version (per image)
convserve_preprocess_duration_seconds      histogram model, version (per image: resize, crop)
convserve_queue_duration_seconds           histogram model, version (per image, batcher queue)
convserve_inference_duration_seconds       histogram model, version (per ONNX Runtime run)
convserve_batch_size                       histogram model, version (images per run)
convserve_inference_count_total            counter   model, version (images inferred)
convserve_inference_exec_count_total       counter   model, version (ONNX Runtime runs)
convserve_queue_depth                      gauge     model, version (images waiting)
convserve_queue_rejected_total             counter   model, version (503 overloaded)
convserve_model_load_duration_seconds      gauge     model, version
convserve_model_info                       gauge     model, version, task, provider (= 1)
convserve_model_ready                      gauge     model, version (1 ready)
convserve_model_request_duration_seconds   histogram model, version, outcome (success, fail:
                                                     Open Inference Protocol infer requests,
                                                     HTTP and gRPC, server side)
convserve_input_duration_seconds           histogram model, version (reading a protocol
                                                     request's tensor)
convserve_output_duration_seconds          histogram model, version (building the answer)
convserve_batch_inference_duration_seconds summary   model, version, batch_size (runs by size)
convserve_last_inference_timestamp_seconds gauge     model, version (end of the latest run)
========================================== ========= =========================================

The statistics extension (``GET /v2/models/{name}/stats``, gRPC ModelStatistics) is read from
these same series by :mod:`service.statistics`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST
MODEL = ("model", "version")
# Read by prometheus-client when it is imported, as here: set means the values live in files.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


@dataclass(frozen=True)
class ModelMetrics:
    """One model version's metric children (``labels()`` looked up once, not per request)."""

    key: tuple[str, str]
    parent: Metrics
    decode: Any
    preprocess: Any
    queue: Any
    inference: Any
    batch_size: Any
    inference_count: Any
    exec_count: Any
    queue_depth: Any
    rejected: Any
    input: Any
    output: Any
    last_inference: Any
    succeeded: Any
    failed: Any
    _by_size: dict[int, Any] = field(default_factory=dict)

    def ran(self, batch_size: int, seconds: float) -> None:
        """One model run of ``batch_size`` images that took ``seconds``."""
        self.inference.observe(seconds)
        self.batch_size.observe(batch_size)
        self.inference_count.inc(batch_size)
        self.exec_count.inc()
        self.last_inference.set(time.time())
        child = self._by_size.get(batch_size)
        if child is None:
            child = self._by_size[batch_size] = self.parent.batch_runs.labels(
                *self.key, str(batch_size))
        child.observe(seconds)

    def answered(self, ok: bool, seconds: float) -> None:
        """A protocol infer request for this version ended: success or failure."""
        (self.succeeded if ok else self.failed).observe(seconds)


# The metrics labelled by (model, version) alone: a ModelMetrics field and a Metrics attribute
# each; model() creates their children and forget() removes them, from this one list.
_PER_VERSION = ("decode", "preprocess", "queue", "inference", "batch_size", "inference_count",
                "exec_count", "queue_depth", "rejected", "input", "output", "last_inference")


class Metrics:
    """The service's metrics, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str], ModelMetrics] = {}
        reg = self.registry
        self.requests = Counter("convserve_requests", "HTTP requests by route and status",
                                ("route", "method", "status"), registry=reg)
        self.request_duration = Histogram(
            "convserve_request_duration_seconds", "Whole-request latency on the server",
            ("route",), buckets=LATENCY_BUCKETS, registry=reg)
        self.decode = Histogram("convserve_decode_duration_seconds",
                                "Image decoding (sniff, header, decode, orient, convert)",
                                MODEL, buckets=LATENCY_BUCKETS, registry=reg)
        self.preprocess = Histogram("convserve_preprocess_duration_seconds",
                                    "Resize and crop to the model's input", MODEL,
                                    buckets=LATENCY_BUCKETS, registry=reg)
        self.queue = Histogram("convserve_queue_duration_seconds",
                               "Time an image waits in the batching queue", MODEL,
                               buckets=LATENCY_BUCKETS, registry=reg)
        self.inference = Histogram("convserve_inference_duration_seconds",
                                   "One ONNX Runtime run of a batch", MODEL,
                                   buckets=LATENCY_BUCKETS, registry=reg)
        self.batch_size = Histogram("convserve_batch_size", "Images per ONNX Runtime run",
                                    MODEL, buckets=BATCH_BUCKETS, registry=reg)
        self.inference_count = Counter("convserve_inference_count", "Images inferred", MODEL,
                                       registry=reg)
        self.exec_count = Counter("convserve_inference_exec_count", "ONNX Runtime runs",
                                  MODEL, registry=reg)
        self.queue_depth = Gauge("convserve_queue_depth", "Images waiting in the batching queue",
                                 MODEL, registry=reg, multiprocess_mode="livesum")
        self.rejected = Counter("convserve_queue_rejected", "Images refused: queue full (503)",
                                MODEL, registry=reg)
        self.load_time = Gauge("convserve_model_load_duration_seconds",
                               "Time to load and warm up a model version", MODEL, registry=reg,
                               multiprocess_mode="livemax")
        self.model_info = Gauge("convserve_model_info", "Loaded model versions (value 1)",
                                (*MODEL, "task", "provider"), registry=reg,
                                multiprocess_mode="livemax")
        self.model_ready = Gauge("convserve_model_ready", "1 when the version serves", MODEL,
                                 registry=reg, multiprocess_mode="livemin")
        self.model_requests = Histogram(
            "convserve_model_request_duration_seconds",
            "Open Inference Protocol infer requests (HTTP and gRPC) by outcome",
            (*MODEL, "outcome"), buckets=LATENCY_BUCKETS, registry=reg)
        self.input = Histogram("convserve_input_duration_seconds",
                               "Reading a protocol request's tensor", MODEL,
                               buckets=LATENCY_BUCKETS, registry=reg)
        self.output = Histogram("convserve_output_duration_seconds",
                                "Building a protocol answer's tensors", MODEL,
                                buckets=LATENCY_BUCKETS, registry=reg)
        self.batch_runs = Summary("convserve_batch_inference_duration_seconds",
                                  "ONNX Runtime runs by batch size", (*MODEL, "batch_size"),
                                  registry=reg)
        self.last_inference = Gauge("convserve_last_inference_timestamp_seconds",
                                    "When the latest run of the version ended (Unix time)",
                                    MODEL, registry=reg, multiprocess_mode="max")
        # Expression streams (service/streams.py)
        self.stream_frames = Counter("convserve_stream_frames", "Stream frames by outcome: "
                                     "processed, dropped (a newer frame replaced it), failed",
                                     ("outcome",), registry=reg)
        self.stream_frame_duration = Histogram(
            "convserve_stream_frame_duration_seconds", "Stream frame latency, received to "
            "answered", buckets=LATENCY_BUCKETS, registry=reg)
        self.streams_active = Gauge("convserve_streams_active", "Open expression streams",
                                    registry=reg, multiprocess_mode="livesum")

    def model(self, name: str, version: int | str) -> ModelMetrics:
        """The per-version children of the model metrics, cached."""
        key = (name, str(version))
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = ModelMetrics(
                key=key, parent=self,
                **{name: getattr(self, name).labels(*key) for name in _PER_VERSION},
                succeeded=self.model_requests.labels(*key, "success"),
                failed=self.model_requests.labels(*key, "fail"))
        return found

    def model_loaded(self, name: str, version: int, task: str, provider: str,
                     seconds: float) -> None:
        """Record a version that finished loading."""
        self.load_time.labels(name, str(version)).set(seconds)
        self.model_info.labels(name, str(version), task, provider).set(1)
        self.model_ready.labels(name, str(version)).set(1)

    def model_unloaded(self, name: str, version: int, task: str, provider: str) -> None:
        """A version was removed by a reload: its info, load time and ready series end (set to
        0 first: with ``--workers N`` the value stays in this worker's file, where 0 is right)."""
        labels = (name, str(version))
        for gauge, extra in ((self.model_ready, ()), (self.model_info, (task, provider)),
                             (self.load_time, ())):
            gauge.labels(*labels, *extra).set(0)
            gauge.remove(*labels, *extra)

    def forget(self, name: str, version: int | str) -> None:
        """End a version's per-request series (its lane has closed: nothing observes them)."""
        key = (name, str(version))
        children = self._children.pop(key, None)
        if children is None:
            return
        labels: list[tuple[Any, tuple[str, ...]]] = [
            (getattr(self, name), key) for name in _PER_VERSION]
        labels += [(self.model_requests, (*key, outcome)) for outcome in ("success", "fail")]
        labels += [(self.batch_runs, (*key, str(size))) for size in children._by_size]
        for metric, values in labels:
            try:
                metric.remove(*values)
            except KeyError:
                pass

    def collect(self) -> list[Any]:
        """The metric families: this app's, or every worker's summed (as :meth:`render`)."""
        if MULTIPROCESS:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return list(registry.collect())
        return list(self.registry.collect())

    def render(self) -> bytes:
        """The text exposition format: this app's metrics, or every worker's summed."""
        if MULTIPROCESS:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
