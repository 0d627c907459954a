"""One Open Inference Protocol inference, from the request's tensors to the answer's: the steps
HTTP ``/v2`` and gRPC ``ModelInfer`` share, timed into the metrics the statistics extension
reads (:mod:`service.statistics`).

The adapter hands :func:`infer` a blocking function that reads the request
(:func:`service.oip.parse_infer_request` for an HTTP body,
:func:`service.inference_protocol.read_request` for a protobuf message); it runs in the decode
pool when ``offload`` (a large JSON body), inline otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from service import tracing
from service.inference_protocol import InferRequest, OutputTensor, answer_tensors
from service.metrics import ModelMetrics
from service.model_version import ModelVersion

T = TypeVar("T")
INLINE_ENCODE_VALUES = 16 * 1024  # output values (images x classes) built on the event loop;
# larger answers are built in the decode pool


class InferenceEngine(Protocol):
    """What an inference needs from :class:`service.engine.Engine`."""

    def metrics_of(self, version: ModelVersion) -> ModelMetrics | None: ...

    async def in_pool(self, function: Callable[..., T], *args: Any) -> T: ...

    async def infer(self, version: ModelVersion, arrays: list[np.ndarray]) -> list[Any]: ...


async def infer(engine: InferenceEngine, version: ModelVersion,
                read: Callable[[], InferRequest],
                offload: bool = False) -> tuple[InferRequest, list[OutputTensor]]:
    """Read the request, run it through the batcher, build the answer tensors.

    Raises:
        ProtocolError: the request does not fit the model or the limits.
        Overloaded, NotReady: from the batcher.
    """
    metrics = engine.metrics_of(version)  # None once a reload retired the version
    tracing.set_attributes(model=version.name, version=version.version)
    start = time.perf_counter()
    ok = False
    try:
        with tracing.step("read"):
            request = await engine.in_pool(read) if offload else read()
        if metrics is not None:
            metrics.input.observe(time.perf_counter() - start)
        tracing.set_attributes(images=len(request.tensor))
        rows = await engine.infer(version, list(request.tensor))  # queue, inference spans
        answering = time.perf_counter()
        stacked = np.stack(rows)
        with tracing.step("encode"):
            if stacked.size <= INLINE_ENCODE_VALUES:
                outputs = answer_tensors(request, stacked, version.labels)
            else:
                outputs = await engine.in_pool(answer_tensors, request, stacked, version.labels)
        if metrics is not None:
            metrics.output.observe(time.perf_counter() - answering)
        ok = True
        return request, outputs
    finally:
        if metrics is not None:
            metrics.answered(ok, time.perf_counter() - start)
