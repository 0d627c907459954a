"""The one place an exception becomes a gRPC status (HTTP's is ``service.http.errors``).

Each :class:`~service.errors.ServiceError` keeps its message; its HTTP status picks the code
(:data:`CODES`): 400, 415 and 422 are INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND, 408
DEADLINE_EXCEEDED, 413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE with the retry hint in the trailing
metadata (``retry-after`` in seconds, as HTTP's header, and gRPC's own
``grpc-retry-pushback-ms``). Anything else is a bug: INTERNAL with a message that reveals
nothing but the request id to quote.
"""

from __future__ import annotations

import grpc

from service.errors import ServiceError

CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The HTTP status a gRPC outcome is counted as in convserve_requests_total (as HTTP's 499).
CLIENT_CLOSED = 499
HTTP_STATUS = {code: status for status, code in CODES.items() if status not in (415, 422, 429)}


def describe(exc: BaseException, request_id: str) -> tuple[grpc.StatusCode, str,
                                                            tuple[tuple[str, str], ...], int]:
    """Code, message, trailing metadata and HTTP-equivalent status of the answer to ``exc``."""
    if isinstance(exc, ServiceError):
        code = CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)
        trailers: tuple[tuple[str, str], ...] = ()
        retry = exc.headers.get("Retry-After")
        if retry is not None and retry.isdigit():
            trailers = (("retry-after", retry),
                        ("grpc-retry-pushback-ms", str(int(retry) * 1000)))
        return code, exc.message, trailers, exc.status_code
    return (grpc.StatusCode.INTERNAL,
            f"internal server error; quote request id {request_id} when reporting", (), 500)


def is_unexpected(exc: BaseException) -> bool:
    """Whether ``exc`` is a bug (answered INTERNAL, logged with its traceback)."""
    return not isinstance(exc, ServiceError)
