"""The Open Inference Protocol over gRPC: a second thin adapter over the same engine as HTTP.

``inference.proto`` (and the code generated from it), :mod:`service.grpc.errors` (domain errors
to gRPC status codes, in one place), :mod:`service.grpc.servicer` (the RPCs) and
:mod:`service.grpc.server` (the ``grpc.aio`` server that starts and drains with the service).

Nothing here is imported until a server starts: the generated messages register the protocol's
``inference.*`` names in protobuf's default pool, as tritonclient's own do, and one process can
hold only one of them.
"""
