"""Optional API key: Bearer auth on everything but health and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def locked(make_client: Callable[..., Any], tiny_models: Path) -> Iterator[TestClient]:
    with make_client(tiny_models, api_key=KEY) as client:
        yield client


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_and_metrics_need_no_key(locked: TestClient, path: str) -> None:
    assert locked.get(path).status_code == 200


def test_open_protocol_health_paths_need_no_key(locked: TestClient) -> None:
    assert locked.get("/v2/health/live").status_code != 401


def test_page_loads_without_key_but_its_api_calls_need_one(locked: TestClient) -> None:
    page = locked.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert locked.get("/static/app.js").status_code == 200
    assert locked.get("/v1/models").status_code == 401


def test_the_api_documentation_needs_no_key_and_offers_swagger_authorize(
        locked: TestClient, tiny_client: TestClient) -> None:
    """/docs, its assets and /openapi.json carry no data; the schema declares the Bearer key on
    every protected route, which gives Swagger UI its Authorize button."""
    assert locked.get("/docs").status_code == 200
    assert locked.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    schema = locked.get("/openapi.json")
    assert schema.status_code == 200
    spec = schema.json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "the service's CONVSERVE_API_KEY"}
    assert spec["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
    assert spec["paths"]["/v1/models/{name}/classify"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    # Without a key the schema names no scheme: Swagger UI then shows no Authorize button.
    open_spec = tiny_client.get("/openapi.json").json()
    assert "securitySchemes" not in open_spec.get("components", {})
    assert "security" not in open_spec["paths"]["/v1/models"]["get"]


@pytest.mark.parametrize(("headers", "wording"), [
    ({}, "missing API key"),
    ({"Authorization": "Bearer wrong"}, "wrong API key"),
    ({"Authorization": KEY}, "wrong API key"),  # no Bearer
    ({"Authorization": f"Bearer {KEY}x"}, "wrong API key"),
])
def test_wrong_or_missing_key_is_401(locked: TestClient, headers: dict[str, str],
                                     wording: str) -> None:
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/models/tiny-rgb/classify"),
                         ("POST", "/v1/repository/reload")):
        response = locked.request(method, path, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert error["code"] == "unauthorized" and wording in error["message"]
        assert KEY not in response.text


def test_right_key_is_let_in(locked: TestClient, photo: Callable[[str], bytes]) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    assert locked.get("/v1/models", headers=headers).status_code == 200
    response = locked.post("/v1/models/tiny-rgb/classify", headers=headers,
                           files={"file": ("c.png", photo("chelsea"))})
    assert response.status_code == 200


def test_the_scheme_is_case_insensitive(locked: TestClient) -> None:
    for scheme in ("bearer", "BEARER"):  # RFC 9110: the scheme is case-insensitive
        headers = {"Authorization": f"{scheme} {KEY}"}
        assert locked.get("/v1/models", headers=headers).status_code == 200


def test_no_key_configured_means_open(tiny_client: TestClient) -> None:
    assert tiny_client.get("/v1/models").status_code == 200
    assert tiny_client.get("/v1/models", headers={"Authorization": "Bearer x"}).status_code == 200
