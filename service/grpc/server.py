"""The ``grpc.aio`` server: started after the engine, stopped before it, in every worker.

:func:`serve_grpc` wraps an app's lifespan (``convserve serve`` and each ``--workers N`` worker
call it; an app built for tests has no gRPC port): once the engine has started, the server
listens on ``CONVSERVE_GRPC_PORT`` (8001; 0 turns it off), on the HTTP host; on shutdown
(SIGTERM) it refuses new calls and finishes the accepted ones within
``CONVSERVE_GRACEFUL_SHUTDOWN_S``, then the engine drains its queues. With ``--workers N`` every
worker binds the same port with ``SO_REUSEPORT`` and the kernel spreads connections over them,
as HTTP's shared socket does; one process binds it alone, so a port in use fails the start.

Messages are bounded by ``CONVSERVE_MAX_BODY_BYTES``, as HTTP bodies are (larger ones:
RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from service.errors import SettingsError

if TYPE_CHECKING:
    import grpc

    from service.engine import Engine

logger = logging.getLogger("convserve.grpc")


async def start_server(engine: Engine, server_version: str, *,
                       reuse_port: bool) -> grpc.aio.Server:
    """Listen on ``engine.settings``' host and gRPC port.

    Raises:
        RuntimeError: the port cannot be bound.
    """
    import grpc

    from service.grpc.inference_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
    from service.grpc.servicer import InferenceServicer

    settings = engine.settings
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ])
    add_GRPCInferenceServiceServicer_to_server(InferenceServicer(engine, server_version), server)
    address = f"{settings.host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen for gRPC on {address} ({exc}); choose another port "
                           "with CONVSERVE_GRPC_PORT, or 0 for no gRPC") from None
    await server.start()
    logger.info("gRPC (Open Inference Protocol) on %s", address)
    return server


def serve_grpc(app: Any, *, reuse_port: bool = False) -> None:
    """Run a gRPC server inside ``app``'s lifespan, over its engine (no-op with port 0)."""
    if app.state.engine.settings.grpc_port == 0:
        return
    if importlib.util.find_spec("grpc") is None:
        raise SettingsError("gRPC needs grpcio, which the 'serve' and 'serve-cpu' extras "
                            "install: reinstall one of them, or set CONVSERVE_GRPC_PORT=0 "
                            "(--grpc-port 0) for HTTP only")
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with inner(app) as state:
            engine = app.state.engine
            server = await start_server(engine, app.version, reuse_port=reuse_port)
            try:
                yield state
            finally:
                await server.stop(grace=engine.settings.graceful_shutdown_s)
                logger.info("gRPC stopped: accepted calls finished")

    app.router.lifespan_context = lifespan

