"""The web page: ``GET /`` and its static files (plain HTML/JS/CSS, no build step).

The page talks to the public REST API (``/readyz``, ``/v1/models``, ``/v1/models/{name}/classify``,
``/v1/expressions``) like any other client. Only the files in :data:`FILES` are served, by
name, so no request path ever reaches the file system. They are read once, when the app is
built: reinstalling the package under a running service (``pip install`` removes and rewrites
site-packages) does not take the page away from it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "explain.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CACHE = {"Cache-Control": "no-cache"}  # revalidate (ETag): a new release shows at once

router = APIRouter(tags=["page"], include_in_schema=False)


def _read(name: str) -> tuple[bytes, str]:
    content = (STATIC_DIR / name).read_bytes()
    return content, '"' + hashlib.sha256(content).hexdigest()[:32] + '"'


PAGE = {name: _read(name) for name in FILES}  # name -> (content, ETag), read once


def _file(name: str, request: Request) -> Response:
    if name not in FILES:
        raise HTTPException(404, f"no static file {name!r}; the page is at /")
    content, etag = PAGE[name]
    headers = {**CACHE, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=FILES[name], headers=headers)


@router.get("/")
async def page(request: Request) -> Response:
    """The page where a person tries the models."""
    return _file("index.html", request)


@router.get("/static/{name}")
async def static(name: str, request: Request) -> Response:
    """The page's script, style sheet and icon."""
    return _file(name, request)
