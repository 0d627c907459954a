"""``convserve predict``: in this process and through a running service, on real photos.

The shipped models give meaningful answers (MobileNetV2 on a cat photo, the expression model on a
photo of five faces); the in-process answer must equal the one the running service gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import serve_models

from service.cli import main
from training.assets import fetch

CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
EXPRESSIONS = {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}


@pytest.fixture(scope="module")
def models(shipped_repository: Callable[..., Path]) -> Path:
    """The shipped classifier, expression model and face detector."""
    return shipped_repository("imagenet-mobilenetv2", "fer-minixception", "face-mtcnn",
                              "face-retinaface")


@pytest.fixture(scope="module")
def url(models: Path) -> Iterator[str]:
    """A running service (uvicorn, its own process) over ``models``."""
    with serve_models(models) as (_, address):
        yield address


def _predict(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["predict", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_PROVIDERS", "CPU")


@pytest.mark.slow
def test_in_process_matches_the_running_service(models: Path, url: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    photos = [str(fetch("chelsea")), str(fetch("coffee"))]
    code, out, _ = _predict(capsys, *photos, "--model", "imagenet-mobilenetv2",
                            "--models", str(models), "--json", "-k", "3")
    assert code == 0
    local = json.loads(out)
    code, out, _ = _predict(capsys, *photos, "--model", "imagenet-mobilenetv2", "--url", url,
                            "--json", "-k", "3")
    assert code == 0
    remote = json.loads(out)
    assert [r["path"] for r in local] == photos
    assert local[0]["predictions"][0]["label"] in CATS
    assert local[0]["model"] == "imagenet-mobilenetv2" and local[0]["version"] >= 1
    for here, there in zip(local, remote, strict=True):
        labels = [p["label"] for p in there["predictions"]]
        assert [p["label"] for p in here["predictions"]] == labels
        for a, b in zip(here["predictions"], there["predictions"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_text_output(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    photo = str(fetch("chelsea"))
    code, out, _ = _predict(capsys, photo, "--model", "imagenet-mobilenetv2", "--url", url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(photo) and "(imagenet-mobilenetv2 v" in lines[0]
    assert len(lines) == 6  # the file, then the top 5 classes
    assert lines[1].split(None, 1)[0] == "1."
    assert any(cat in lines[1] for cat in CATS)


@pytest.mark.slow
def test_expressions_of_five_faces(url: str, models: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    photo = str(fetch("multi-face"))
    code, out, _ = _predict(capsys, photo, "--model", "fer-minixception", "--url", url, "--json")
    assert code == 0
    faces = json.loads(out)[0]["faces"]
    assert len(faces) == 5
    assert all(face["expression"] in EXPRESSIONS for face in faces)
    code, text, _ = _predict(capsys, photo, "--model", "fer-minixception", "--models",
                             str(models))
    assert code == 0
    assert text.splitlines()[0].endswith("(fer-minixception v1): 5 face(s)")
    assert [line.split(": ")[1].split()[0] for line in text.splitlines()[1:]] == \
        [face["expression"] for face in faces]
    code, out, _ = _predict(capsys, photo, "--model", "fer-minixception", "--version", "1",
                            "--url", url, "--json")  # --version works for every task
    assert code == 0 and json.loads(out)[0]["version"] == 1
    code, _, err = _predict(capsys, photo, "--model", "fer-minixception", "--version", "9",
                            "--url", url)
    assert code == 2 and "model 'fer-minixception' has no version '9'" in err


def test_bad_files_are_reported_and_the_rest_answered(url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    code, out, err = _predict(capsys, str(tmp_path / "missing.jpg"), str(text),
                              str(fetch("chelsea")), "--model", "imagenet-mobilenetv2",
                              "--url", url, "--json")
    assert code == 1
    assert f"{tmp_path / 'missing.jpg'}: No such file or directory" in err
    assert f"{text}: the data is not a decodable image" in err
    assert [r["path"] for r in json.loads(out)] == [str(fetch("chelsea"))]


def test_unknown_model_and_unreachable_service(models: Path, url: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    photo = str(fetch("chelsea"))
    code, _, err = _predict(capsys, photo, "--model", "no-such-model", "--url", url)
    assert code == 2 and "no model named 'no-such-model'" in err
    code, _, err = _predict(capsys, photo, "--model", "no-such-model", "--models", str(models))
    assert code == 2 and "no model 'no-such-model'" in err and "imagenet-mobilenetv2" in err
    code, _, err = _predict(capsys, photo, "--model", "imagenet-mobilenetv2",
                            "--url", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach http://127.0.0.1:9" in err


def test_a_new_users_command_line_prints_no_warnings(models: Path) -> None:
    """``convserve predict`` as a user runs it, in a fresh process: the answer on stdout and
    nothing on stderr (no deprecation warning, no CUDA warning on a CPU-only run)."""
    env = {**os.environ, "CONVSERVE_PROVIDERS": "CPU", "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-m", "service", "predict", str(fetch("chelsea")), "--model",
         "imagenet-mobilenetv2", "--models", str(models), "-k", "1"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert any(cat in done.stdout for cat in CATS)
    usage = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True,
                           text=True, env=env, timeout=60, check=True).stdout
    assert "serve" in usage and "predict" in usage and "``" not in usage
