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
========================================== ========= =========================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
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

    decode: Any
    preprocess: Any
    queue: Any
    inference: Any
    batch_size: Any
    inference_count: Any
    exec_count: Any
    queue_depth: Any
    rejected: Any


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
            found = self._children[key] = ModelMetrics(*(
                metric.labels(*key) for metric in (
                    self.decode, self.preprocess, self.queue, self.inference, self.batch_size,
                    self.inference_count, self.exec_count, self.queue_depth, self.rejected)))
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
        if self._children.pop(key, None) is None:
            return
        for metric in (self.decode, self.preprocess, self.queue, self.inference,
                       self.batch_size, self.inference_count, self.exec_count, self.queue_depth,
                       self.rejected):
            try:
                metric.remove(*key)
            except KeyError:
                pass

    def render(self) -> bytes:
        """The text exposition format: this app's metrics, or every worker's summed."""
        if MULTIPROCESS:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
