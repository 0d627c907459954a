"""OpenTelemetry traces: off unless the standard ``OTEL_*`` variables ask for them, free when off.

Tracing starts (:func:`configure`, called once per process by ``convserve serve`` and each
worker) when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set,
or ``OTEL_TRACES_EXPORTER`` names ``otlp``, and ``OTEL_SDK_DISABLED`` is not ``true``. It needs
the ``otel`` extra (the SDK and its OTLP/HTTP exporter); everything else (service name, headers,
sampler, batch delays) is the SDK's own reading of ``OTEL_*``.

Each request is one span (HTTP: ``service.http.middleware.Tracing``; gRPC: the servicer's
``rpc`` wrapper), a child of the caller's W3C ``traceparent`` when it sends one, with child
spans for ``read`` (the request's tensor or upload), ``decode`` (images), ``queue`` (waiting in
the batcher), ``inference`` (the model run, with its ``batch_size``) and ``encode`` (the
answer). When off, :data:`TRACER` is None: no middleware is added, and each step costs one
check of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

logger = logging.getLogger("convserve.tracing")

TRACER: Any = None  # an opentelemetry Tracer once configure() turned tracing on
_OFF = contextlib.nullcontext()  # what step() gives when tracing is off (reusable)
_PROVIDER: Any = None
# perf_counter_ns() + this = nanoseconds since the epoch (span times from the batcher's clock)
_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "")
    return ("otlp" in exporters.split(",") or bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            or bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")))


def configure() -> bool:
    """Turn tracing on if the environment asks for it; returns whether it is on.

    Raises:
        SettingsError: traces are asked for but the ``otel`` extra is not installed.
    """
    global TRACER, _PROVIDER
    if TRACER is not None or not requested():
        return TRACER is not None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        from service.errors import SettingsError

        raise SettingsError("OTEL_* asks for traces but OpenTelemetry's SDK is not installed: "
                            "pip install 'convserve[otel]', or unset OTEL_EXPORTER_OTLP_ENDPOINT"
                            " / OTEL_TRACES_EXPORTER") from None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                               "convserve")})
    _PROVIDER = TracerProvider(resource=resource)
    _PROVIDER.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    TRACER = _PROVIDER.get_tracer("convserve")
    logger.info("traces on: OTLP/HTTP to %s", os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "the SDK's default endpoint")))
    return True


def shutdown() -> None:
    """Send the spans still buffered (at the end of the process)."""
    global TRACER, _PROVIDER
    if _PROVIDER is not None:
        _PROVIDER.shutdown()
    TRACER = _PROVIDER = None


@contextlib.contextmanager
def request_span(name: str, carrier: Mapping[str, str],
                 attributes: dict[str, Any]) -> Iterator[Any]:
    """The span of one request (kind SERVER), a child of ``carrier``'s ``traceparent``, current
    for the code inside. Only called when :data:`TRACER` is set."""
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    with TRACER.start_as_current_span(name, context=extract(carrier), kind=SpanKind.SERVER,
                                      attributes=attributes) as span:
        yield span


def step(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current request for one step; nothing when tracing is off."""
    if TRACER is None:
        return _OFF
    return TRACER.start_as_current_span(name, attributes=attributes)


def batch_steps(queued_at: float, started: float, ended: float, batch_size: int) -> None:
    """``queue`` and ``inference`` spans of one input, from the batcher's ``perf_counter``
    times, as children of the current span."""
    if TRACER is None or not ended:
        return
    queue = TRACER.start_span("queue", start_time=_ns(queued_at))
    queue.end(end_time=_ns(started))
    run = TRACER.start_span("inference", start_time=_ns(started),
                            attributes={"batch_size": batch_size})
    run.end(end_time=_ns(ended))


def set_attributes(**attributes: Any) -> None:
    """Attributes on the current span (model, version, images); nothing when tracing is off."""
    if TRACER is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


def _ns(perf_seconds: float) -> int:
    return int(perf_seconds * 1e9) + _EPOCH_OFFSET_NS
