"""The web page: ``GET /`` and its static files (plain HTML/JS/CSS, no build step).

The page talks to the public REST API (``/readyz``, ``/v1/models``, ``/v1/models/{name}/classify``,
``/v1/expressions``) like any other client. Only the files in :data:`FILES` are served, by
name, so no request path ever reaches the file system.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

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


def _file(name: str) -> FileResponse:
    if name not in FILES:
        raise HTTPException(404, f"no static file {name!r}; the page is at /")
    return FileResponse(STATIC_DIR / name, media_type=FILES[name], headers=CACHE)


@router.get("/")
async def page() -> FileResponse:
    """The page where a person tries the models."""
    return _file("index.html")


@router.get("/static/{name}")
async def static(name: str) -> FileResponse:
    """The page's script, style sheet and icon."""
    return _file(name)
