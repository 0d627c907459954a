"""``/docs`` and ``/redoc`` name no other host: their scripts and styles come from this service."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize(("path", "assets"), [
    ("/docs", {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css",
               "/static/favicon.svg", "/openapi.json"}),
    ("/redoc", {"/docs-assets/redoc.standalone.js", "/static/favicon.svg", "/openapi.json"}),
])
def test_docs_pages_load_everything_from_here(tiny_client: TestClient, path: str,
                                              assets: set[str]) -> None:
    page = tiny_client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "cdn." not in page.text and "fonts.googleapis" not in page.text
    named = set(re.findall(r"""(?:src|href|url)\s*[=:]\s*['"](/[^'"]+)['"]""", page.text))
    assert assets <= named, named
    for asset in named:
        answer = tiny_client.get(asset)
        assert answer.status_code == 200, asset
        assert len(answer.content) > 100


def test_only_named_assets_are_served(tiny_client: TestClient) -> None:
    assert tiny_client.get("/docs-assets/..%2Fcore.py").status_code == 404
    response = tiny_client.get("/docs-assets/favicon.png")  # in the package, but not named
    assert response.status_code == 404
    assert "no documentation asset 'favicon.png'" in response.json()["error"]["message"]
    assert tiny_client.get("/docs-assets/redoc.standalone.js").headers[
        "content-type"].startswith("text/javascript")
