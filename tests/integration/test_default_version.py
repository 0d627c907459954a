"""``models/<name>/default_version`` pins the version served when a request names none.

Without the file the newest version answers (a new export goes live at the next reload); with it
a new version is served only when asked for by number, until the file names it. A pin that names
no loaded version, or holds no number, keeps ``/readyz`` at 503 and says how to fix it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

CLASSIFY = "/v1/models/tiny-rgb/classify"


@pytest.fixture()
def models(tmp_path: Path, tiny_models: Path) -> Path:
    shutil.copytree(tiny_models, tmp_path / "models")
    return tmp_path / "models"


def _served(client: TestClient, data: bytes) -> int:
    response = client.post(CLASSIFY, files={"file": ("cat.png", data)})
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


def _listed(client: TestClient) -> tuple[int, bool]:
    info = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == "tiny-rgb")
    assert info == client.get("/v1/models/tiny-rgb").json()
    return info["default_version"], info["pinned"]


def test_pinned_version_answers_until_the_file_changes(
        make_client: Callable[..., Any], models: Path, photo: Callable[[str], bytes]) -> None:
    data = photo("chelsea")
    pin = models / "tiny-rgb" / "default_version"
    with make_client(models) as client:
        assert _served(client, data) == 2 and _listed(client) == (2, False)
        pin.write_text("1\n")
        assert client.post("/v1/repository/reload").json()["failed"] == {}
        assert _served(client, data) == 1 and _listed(client) == (1, True)
        assert client.post("/v1/models/tiny-rgb/versions/2/classify",
                           files={"file": ("c", data)}).json()["version"] == 2
        pin.unlink()
        client.post("/v1/repository/reload")
        assert _served(client, data) == 2 and _listed(client) == (2, False)


def test_pin_read_at_start_up(make_client: Callable[..., Any], models: Path,
                              photo: Callable[[str], bytes]) -> None:
    (models / "tiny-rgb" / "default_version").write_text("1")
    with make_client(models) as client:
        assert client.get("/readyz").status_code == 200
        assert _served(client, photo("chelsea")) == 1 and _listed(client) == (1, True)


@pytest.mark.parametrize(("content", "message"), [
    ("7", "the default version 7 is not loaded (versions: 1, 2)"),
    ("latest", "holds 'latest', not a version number"),
])
def test_a_bad_pin_is_not_ready_and_says_why(make_client: Callable[..., Any], models: Path,
                                             photo: Callable[[str], bytes], content: str,
                                             message: str) -> None:
    (models / "tiny-rgb" / "default_version").write_text(content)
    with make_client(models, ready=False) as client:
        reloaded = client.post("/v1/repository/reload").json()
        assert message in reloaded["failed"]["tiny-rgb/default_version"]
        ready = client.get("/readyz")  # public: names what failed, why is in the log
        said = ready.json()["error"]["message"]
        assert ready.status_code == 503 and "tiny-rgb/default_version" in said
        assert message not in said and str(models) not in said
        # The other models still answer; a pinned-but-missing default is never replaced by
        # an unvetted newest version.
        assert client.post("/v1/models/tiny-grey/classify",
                           files={"file": ("c", photo("chelsea"))}).status_code == 200
        answer = client.post(CLASSIFY, files={"file": ("c", photo("chelsea"))})
        if content == "7":
            assert answer.status_code == 404
            assert "the default version 7 of model 'tiny-rgb' is not loaded" in \
                answer.json()["error"]["message"]
        else:
            assert answer.json()["version"] == 2
