"""The API key in ``/openapi.json``: a Bearer scheme that every protected route requires.

With ``CONVSERVE_API_KEY`` set, Swagger UI at ``/docs`` then shows its own **Authorize**
button and sends ``Authorization: Bearer <key>`` with every "Try it out"; the documentation
pages themselves need no key (``middleware.PUBLIC_PATHS``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.http.middleware import PUBLIC_PATHS, PUBLIC_PREFIXES

SCHEME = "bearer"


def document_bearer_auth(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare the Bearer scheme on every route the key protects."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
            "type": "http", "scheme": "bearer",
            "description": "the service's CONVSERVE_API_KEY"}
        for path, operations in schema.get("paths", {}).items():
            if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
                continue
            for operation in operations.values():
                operation["security"] = [{SCHEME: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
