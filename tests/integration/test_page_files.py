"""The page's files are read once: reinstalling the package under a running service (pip
removes site-packages' files, then writes them again) does not take the page away."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.http.routes import ui


def test_the_page_is_served_from_memory_with_a_working_etag(
        tiny_client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    on_disk = (ui.STATIC_DIR / "app.js").read_bytes()
    monkeypatch.setattr(ui, "STATIC_DIR", tmp_path / "removed-by-pip")  # no such folder now
    page, script = tiny_client.get("/"), tiny_client.get("/static/app.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert script.status_code == 200 and script.content == on_disk
    assert script.headers["cache-control"] == "no-cache"
    again = tiny_client.get("/static/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert tiny_client.get("/static/nope.js").status_code == 404
