"""Triton's statistics extension, read from the same series that ``/metrics`` serves.

``GET /v2/models[/{name}[/versions/{v}]]/stats`` and gRPC ``ModelStatistics`` answer
:func:`model_statistics`: per model version, the counts and cumulative nanoseconds Triton
reports (``success``, ``fail``, ``queue``, ``compute_input``, ``compute_infer``,
``compute_output``; ``batch_stats`` per batch size), computed from the
:class:`~service.metrics.Metrics` histograms (summed over every worker with ``--workers N``, as
a scrape is). What each figure counts:

* ``success`` / ``fail``: Open Inference Protocol infer requests (HTTP ``/v2`` and gRPC), from
  reading the tensor to the answer built (``convserve_model_request_duration_seconds``);
* ``queue``: each image's wait in the batching queue, ``/v1`` images included;
* ``compute_input``: reading protocol tensors, and decoding and resizing ``/v1`` images;
* ``compute_infer``: ONNX Runtime runs (a batch is one), ``batch_stats`` by batch size;
* ``compute_output``: building protocol answers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from service.metrics import Metrics

NS = 1e9
Key = tuple[str, str, str]  # model, version, and outcome or batch size ("" if neither)


def _index(families: Iterable[Any]) -> dict[str, dict[Key, float]]:
    """``{sample name: {(model, version, extra): value}}`` for the per-model samples."""
    found: dict[str, dict[Key, float]] = defaultdict(dict)
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if "model" not in labels or "version" not in labels:
                continue
            extra = labels.get("outcome", labels.get("batch_size", ""))
            key = (labels["model"], labels["version"], extra)
            found[sample.name][key] = found[sample.name].get(key, 0.0) + sample.value
    return found


def _duration(index: dict[str, dict[Key, float]], key: Key, *metrics: str,
              count_of: Iterable[str] | None = None) -> dict[str, int]:
    """``{"count", "ns"}``: the ``_count`` of ``count_of`` (default ``metrics``), the ``_sum``
    of ``metrics``."""
    names = metrics if count_of is None else tuple(count_of)
    count = sum(index.get(f"{name}_count", {}).get(key, 0.0) for name in names)
    seconds = sum(index.get(f"{name}_sum", {}).get(key, 0.0) for name in metrics)
    return {"count": int(count), "ns": int(round(seconds * NS))}


def _one(index: dict[str, dict[Key, float]], name: str, version: str) -> dict[str, Any]:
    key = (name, version, "")
    runs = "convserve_batch_inference_duration_seconds"
    sizes = sorted(int(size) for (model, ver, size) in index.get(f"{runs}_count", {})
                   if (model, ver) == (name, version) and size)
    none = {"count": 0, "ns": 0}
    batch_stats = [{"batch_size": size, "compute_input": none, "compute_output": none,
                    "compute_infer": _duration(index, (name, version, str(size)), runs)}
                   for size in sizes]
    requests = "convserve_model_request_duration_seconds"
    last = index.get("convserve_last_inference_timestamp_seconds", {}).get(key, 0.0)
    return {
        "name": name, "version": version,
        "last_inference": int(last * 1000),
        "inference_count": int(index.get("convserve_inference_count_total", {}).get(key, 0)),
        "execution_count": int(index.get("convserve_inference_exec_count_total", {})
                               .get(key, 0)),
        "inference_stats": {
            "success": _duration(index, (name, version, "success"), requests),
            "fail": _duration(index, (name, version, "fail"), requests),
            "queue": _duration(index, key, "convserve_queue_duration_seconds"),
            "compute_input": _duration(
                index, key, "convserve_input_duration_seconds",
                "convserve_decode_duration_seconds", "convserve_preprocess_duration_seconds",
                count_of=("convserve_input_duration_seconds",
                          "convserve_decode_duration_seconds")),
            "compute_infer": _duration(index, key, "convserve_inference_duration_seconds"),
            "compute_output": _duration(index, key, "convserve_output_duration_seconds"),
        },
        "batch_stats": batch_stats,
    }


def model_statistics(metrics: Metrics, versions: Iterable[tuple[str, int]]) -> dict[str, Any]:
    """Triton's statistics answer, ``{"model_stats": [...]}``, for ``(name, version)`` pairs."""
    index = _index(metrics.collect())
    return {"model_stats": [_one(index, name, str(version)) for name, version in versions]}
