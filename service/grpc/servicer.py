"""``inference.GRPCInferenceService``: each RPC parses its message, calls the engine, formats.

The answers are HTTP ``/v2``'s, from the same functions (:mod:`service.inference_protocol`,
:mod:`service.protocol_infer`, :mod:`service.statistics`): the same default version, limits,
classification extension and messages. :func:`rpc` wraps every method once: the API key (the
``authorization`` metadata; ServerLive and ServerReady are public, as ``/v2/health/*`` is),
errors to status codes (:mod:`service.grpc.errors`), a client that cancelled or ran out of
deadline (its queued images are skipped; counted as HTTP's 499), one access log line and the
``convserve_requests_total`` count, as HTTP's ``RequestLog`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from model_format import Capability
from service import protocol_infer, tracing
from service.auth import check_api_key
from service.errors import ModelNotFound, VersionNotFound
from service.grpc import inference_pb2 as pb
from service.grpc import inference_pb2_grpc
from service.grpc.errors import CLIENT_CLOSED, describe, is_unexpected
from service.grpc.messages import from_dict, infer_response, read_infer_request
from service.inference_protocol import (
    EXTENSIONS,
    SERVER_NAME,
    config,
    metadata,
    tensor_spec,
)
from service.statistics import model_statistics

if TYPE_CHECKING:
    from service.engine import Engine

access_log = logging.getLogger("convserve.access")
logger = logging.getLogger("convserve.errors")

SERVICE = "inference.GRPCInferenceService"
INLINE_TYPED_BYTES = 64 * 1024  # larger typed contents are read in the decode pool (raw bytes
# need no conversion: always inline)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)
Req = TypeVar("Req")
Res = TypeVar("Res")
Method = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Res]]


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else None
    return None


def _carrier(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's text metadata (``traceparent``, ``tracestate``) for the trace context."""
    return {item.key: item.value for item in context.invocation_metadata() or ()
            if isinstance(item.value, str)}


def rpc(public: bool = False) -> Callable[[Method[Req, Res]], Method[Req, Res]]:
    """Auth, errors, cancellation, logging and metrics around one RPC method."""

    def wrap(method: Method[Req, Res]) -> Method[Req, Res]:
        route = f"/{SERVICE}/{method.__name__}"

        @functools.wraps(method)
        async def handler(self: InferenceServicer, request: Req,
                          context: grpc.aio.ServicerContext) -> Res:
            start = time.perf_counter()
            incoming = _metadata(context, "x-request-id")
            request_id = (incoming if incoming and _REQUEST_ID.match(incoming)
                          else f"{_ID_PREFIX}{next(_ID_COUNTER):016x}")
            status = 200
            span = (tracing.request_span(route, _carrier(context), {"rpc.system": "grpc"})
                    if tracing.TRACER is not None else contextlib.nullcontext())
            try:
                with span:
                    if not public:
                        check_api_key(_metadata(context, "authorization"), self.api_key)
                    return await method(self, request, context)
            except asyncio.CancelledError:
                status = CLIENT_CLOSED  # the client cancelled, or its deadline passed
                raise
            except Exception as exc:
                code, message, trailers, status = describe(exc, request_id)
                if is_unexpected(exc):
                    logger.error("unhandled error on %s (request %s)", route, request_id,
                                 exc_info=exc)
                context.set_trailing_metadata(trailers)
                await context.abort(code, message)
                raise  # abort raises; this line is never reached
            finally:
                self.record(route, status, time.perf_counter() - start, request_id, context)

        return handler

    return wrap


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs over ``engine``."""

    def __init__(self, engine: Engine, server_version: str) -> None:
        self.engine = engine
        self.server_version = server_version
        key = engine.settings.api_key
        self.api_key = key.get_secret_value() if key is not None else None
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def record(self, route: str, status: int, seconds: float, request_id: str,
               context: grpc.aio.ServicerContext) -> None:
        """Count and log one call, as HTTP's ``RequestLog`` does."""
        children = self._children.get((route, status))
        if children is None:
            metrics = self.engine.metrics
            children = self._children[(route, status)] = (
                metrics.requests.labels(route, "GRPC", str(status)),
                metrics.request_duration.labels(route))
        children[0].inc()
        children[1].observe(seconds)
        if access_log.isEnabledFor(logging.INFO):
            line = {"event": "request", "request_id": request_id, "method": "GRPC",
                    "path": route, "route": route, "status": status,
                    "duration_ms": round(seconds * 1000, 2), "client": context.peer()}
            access_log.info(json.dumps(line))

    @rpc(public=True)
    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc(public=True)
    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.engine.readiness().ready)

    @rpc()
    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            self.engine.get(request.name, request.version or None)
        except (ModelNotFound, VersionNotFound):  # as HTTP's 404: tritonclient says False
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @rpc()
    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.server_version,
                                         extensions=EXTENSIONS)

    @rpc()
    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        chosen = self.engine.get(request.name, request.version or None)
        versions = self.engine.versions(request.name) if not request.version else [chosen]
        return from_dict(metadata(chosen, versions), pb.ModelMetadataResponse())

    @rpc()
    async def ModelConfig(self, request: pb.ModelConfigRequest,
                          context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        chosen = self.engine.get(request.name, request.version or None)
        return pb.ModelConfigResponse(
            config=from_dict(config(chosen, self.engine.settings.max_queue_delay_ms),
                             pb.ModelConfig()))

    @rpc()
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        if not request.name:
            chosen = self.engine.repository.all_versions()
        elif not request.version:
            chosen = self.engine.versions(request.name)
        else:
            chosen = [self.engine.get(request.name, request.version)]
        stats = model_statistics(self.engine.metrics, [(v.name, v.version) for v in chosen])
        return from_dict(stats, pb.ModelStatisticsResponse())

    @rpc()
    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        engine = self.engine
        engine.check_serving()
        version = engine.get(request.model_name, request.model_version or None,
                             Capability.CLASSIFY)
        read = functools.partial(read_infer_request, request, tensor_spec(version),
                                 version.output_name, len(version.labels),
                                 engine.settings.max_images_per_request)
        typed = any(tensor.HasField("contents") for tensor in request.inputs)
        offload = typed and request.ByteSize() > INLINE_TYPED_BYTES  # numbers to convert
        parsed, outputs = await protocol_infer.infer(engine, version, read, offload=offload)
        return infer_response(version.name, version.version, parsed, outputs)
