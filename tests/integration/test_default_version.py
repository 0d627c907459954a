"""``models/<name>/default_version`` pins the version served when a request names none.

Without the file the newest version answers (a new export goes live at the next reload); with it
a new version is served only when asked for by number, until the file names it. A pin that names
no loaded version, or holds no number, keeps ``/readyz`` at 503 and says how to fix it (in the
log and the reload's answer: the public probe names it only), and never lets the newest version
answer in its place; a pin that was good keeps serving across a half-written one.
"""

from __future__ import annotations

import logging
import os
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
    ("latest", "holds b'latest', not a version number"),
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
        assert message not in said and str(models) not in said and content not in said
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
            assert answer.status_code == 503, answer.text
            assert "the default version of model 'tiny-rgb' cannot be read" in \
                answer.json()["error"]["message"]


def _dangling(pin: Path) -> None:
    pin.symlink_to(pin.parent / "nowhere")


# What a reader sees in the middle of `echo 1 > default_version`, and other near misses.
UNREADABLE_PINS: list[tuple[str, Callable[[Path], Any]]] = [
    ("bom", lambda pin: pin.write_bytes(b"\xef\xbb\xbf1\n")),
    ("leading-zero", lambda pin: pin.write_text("01\n")),
    ("v-prefix", lambda pin: pin.write_text("v1\n")),
    ("empty", lambda pin: pin.write_text("")),
    ("directory", lambda pin: pin.mkdir()),
    ("dangling-symlink", _dangling),
]


@pytest.mark.parametrize("make_pin", [m for _, m in UNREADABLE_PINS],
                         ids=[i for i, _ in UNREADABLE_PINS])
def test_an_unreadable_pin_never_serves_the_newest(
        make_client: Callable[..., Any], models: Path, photo: Callable[[str], bytes],
        make_pin: Callable[[Path], Any]) -> None:
    make_pin(models / "tiny-rgb" / "default_version")
    data = photo("chelsea")
    with make_client(models, ready=False) as client:
        assert "tiny-rgb/default_version" in client.post("/v1/repository/reload").json()["failed"]
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert "tiny-rgb/default_version" in ready.json()["error"]["message"]
        answer = client.post(CLASSIFY, files={"file": ("c", data)})
        assert answer.status_code == 503, answer.text
        assert "default version of model 'tiny-rgb' cannot be read" in answer.text
        assert _listed(client) == (0, True)  # the listing still answers: no default
        named = client.post("/v1/models/tiny-rgb/versions/2/classify", files={"file": ("c", data)})
        assert named.status_code == 200 and named.json()["version"] == 2


def test_a_half_written_pin_keeps_the_last_good_default(
        make_client: Callable[..., Any], models: Path, photo: Callable[[str], bytes],
        caplog: pytest.LogCaptureFixture) -> None:
    pin = models / "tiny-rgb" / "default_version"
    pin.write_text("1\n")
    data = photo("chelsea")
    with make_client(models) as client:
        assert _served(client, data) == 1
        pin.write_text("")  # the moment between the shell's truncation and its write
        with caplog.at_level(logging.ERROR, logger="convserve.repository"):
            for _ in range(3):
                failed = client.post("/v1/repository/reload").json()["failed"]
        assert failed == {}  # still served: not a failure, but logged, once
        logged = [r.getMessage() for r in caplog.records if "default_version" in r.getMessage()]
        assert len(logged) == 1 and "still serving version 1" in logged[0], logged
        assert client.get("/readyz").status_code == 200
        assert _served(client, data) == 1 and _listed(client) == (1, True)
        pin.write_text("2\n")
        client.post("/v1/repository/reload")
        assert _served(client, data) == 2


def test_write_pin_replaces_the_file_atomically(models: Path) -> None:
    from model_format.layout import write_pin

    pin = models / "tiny-rgb" / "default_version"
    pin.write_text("1\n")
    before = os.stat(pin).st_ino
    assert write_pin(models / "tiny-rgb", 2) == pin
    assert pin.read_text() == "2\n" and os.stat(pin).st_ino != before  # renamed, not rewritten
    assert sorted(p.name for p in pin.parent.iterdir() if not p.is_dir()) == ["default_version"]


def test_v1_and_v2_describe_and_answer_with_the_same_default(
        make_client: Callable[..., Any], models: Path) -> None:
    """With version 1 pinned and a 64x64 version 3 loaded, /v2 metadata and config describe
    version 1 (the one /v2 infer and every /v1 route use), so inferring with the shape the
    metadata gives works; config's max_batch_size is the version's own cap, as /v1/models says."""
    from conftest import export_tiny_classifier

    export_tiny_classifier(models, "tiny-rgb", 3, size=64, seed=3)
    (models / "tiny-rgb" / "default_version").write_text("1\n")
    with make_client(models) as client:
        meta = client.get("/v2/models/tiny-rgb").json()
        shape = meta["inputs"][0]["shape"]
        assert shape == [-1, 32, 32, 3] and meta["versions"] == ["3", "2", "1"]
        pixels = [0] * (32 * 32 * 3)
        answer = client.post("/v2/models/tiny-rgb/infer", json={"inputs": [{
            "name": "image", "datatype": "UINT8", "shape": [1, *shape[1:]], "data": pixels}]})
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        listed = client.get("/v1/models/tiny-rgb").json()
        assert listed["default_version"] == 1
        config = client.get("/v2/models/tiny-rgb/config").json()
        own = next(v for v in listed["versions"] if v["version"] == 1)["max_batch_size"]
        assert config["max_batch_size"] == own
        assert client.get("/v2/models/tiny-rgb/versions/3").json()["inputs"][0]["shape"] == [
            -1, 64, 64, 3]


def test_v2_config_reports_the_version_cap_from_serving_json(
        make_client: Callable[..., Any], shipped_model: Callable[[str], Path],
        tmp_path: Path) -> None:
    (tmp_path / "imagenet-mobilenetv2").symlink_to(shipped_model("imagenet-mobilenetv2"))
    with make_client(tmp_path) as client:
        own = client.get("/v1/models/imagenet-mobilenetv2").json()["versions"][0]
        config = client.get("/v2/models/imagenet-mobilenetv2/config").json()
        assert config["max_batch_size"] == own["max_batch_size"] < 4  # serving.json's, not 4
