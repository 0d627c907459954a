"""HTTP methods answered as RFC 9110 says: HEAD wherever GET is, and a complete ``Allow``.

- :class:`HeadAsGet`: a ``HEAD`` request is routed as ``GET`` and answered with the same status
  and headers, without the body (RFC 9110, 9.3.2), on every path, so probes, balancers and
  ``curl -I`` work on ``/``, ``/v1/models``, ``/v2`` and the rest, not only on the paths that
  declare it.
- :func:`allowed_methods`: every method some route of the app takes at a path. Starlette puts
  in a 405's ``Allow`` only the methods of the first route that matched the path, so a path
  served by two routes (``first-layer``: GET and POST) listed one of them.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """Routes ``HEAD`` as ``GET`` and drops the body of the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the server ends a HEAD answer at the last (empty) part
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some of ``routes`` takes at the path of ``scope`` (``HEAD`` with ``GET``):
    each method tried against every route, as the router itself would match it."""
    methods = {method for method in METHODS
               if any(route.matches({**scope, "type": "http", "method": method})[0] == Match.FULL
                      for route in routes)}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)
