"""The API key check, the same for every protocol: ``Authorization: Bearer <key>``.

The scheme is case-insensitive (RFC 9110 11.1); the key is compared in constant time. HTTP's
middleware (:class:`service.http.middleware.ApiKeyAuth`) and gRPC's servicer (the
``authorization`` metadata) both call :func:`check_api_key`.
"""

from __future__ import annotations

import hmac

from service.errors import Unauthorized

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def check_api_key(given: str | None, expected: str | None) -> None:
    """Accept ``given`` (the Authorization value) when it carries ``expected``, or no key is set.

    Raises:
        Unauthorized: no key, another scheme, or the wrong key (HTTP 401, gRPC UNAUTHENTICATED).
    """
    if expected is None:
        return
    if not given:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'",
                           headers=CHALLENGE)
    scheme, _, token = given.strip().partition(" ")
    try:  # HTTP headers arrive as latin-1 text: back to the bytes the client sent
        sent = token.strip().encode("latin-1")
    except UnicodeEncodeError:
        sent = token.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent, expected.encode()):
        raise Unauthorized("wrong API key: check the key in 'Authorization: Bearer <key>'",
                           headers=CHALLENGE)
