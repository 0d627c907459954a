"""``/docs`` (Swagger UI) and ``/redoc`` with their scripts served from this host.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank on a host without
internet access. The same files ship in the PyPI package ``fastapi-offline`` (MIT; Swagger UI 5
and ReDoc 2 bundles): they are served from there, by name, under :data:`ASSETS_PREFIX`, and
``create_app`` turns FastAPI's CDN pages off.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_PREFIX = "/docs-assets"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
}
FAVICON_URL = "/static/favicon.svg"  # the page's icon (service/http/static)
CACHE = {"Cache-Control": "public, max-age=86400"}  # a new package version is a new release

router = APIRouter(tags=["docs"], include_in_schema=False)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json``."""
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
        swagger_js_url=f"{root}{ASSETS_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{root}{FAVICON_URL}",
        swagger_ui_parameters={"validatorUrl": None})  # the validator badge calls a server


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc over ``/openapi.json`` (system fonts: Google Fonts are a CDN too)."""
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_PREFIX}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{FAVICON_URL}", with_google_fonts=False)


@router.get(ASSETS_PREFIX + "/{name}")
async def asset(name: str) -> Response:
    """One of the Swagger UI / ReDoc files, by name only (no path reaches the file system)."""
    if name not in ASSETS:
        raise HTTPException(404, f"no documentation asset {name!r}; the docs are at {DOCS_URL}")
    data = (files("fastapi_offline") / "static" / name).read_bytes()
    return Response(data, media_type=ASSETS[name], headers=CACHE)
