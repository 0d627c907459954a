"""The yardstick of ``scripts/bench_handwritten.py`` does the service's work: on the same model
file and the same upload, ``scripts/handwritten_server.py`` answers the same classes with the
same scores (within resizing differences), so the benchmark compares like with like."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import REPO_ROOT, MakeClient

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from bench_handwritten import default_version  # noqa: E402
from bench_request_overhead import image_for  # noqa: E402


def handwritten_app(version_dir: Path) -> TestClient:
    spec = importlib.util.spec_from_file_location(
        "handwritten_server", REPO_ROOT / "scripts" / "handwritten_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return TestClient(module.build_app(version_dir))


@pytest.mark.parametrize("model", ["mnist-lenet5", "fer-minixception", "imagenet-mobilenetv2"])
def test_the_handwritten_server_answers_as_the_service(
        model: str, shipped_repository: Callable[..., Path], make_client: MakeClient) -> None:
    models = shipped_repository(model)
    upload = {"file": ("image", image_for(model), "application/octet-stream")}
    with make_client(models) as service:
        ours = service.post(f"/v1/models/{model}/classify?top_k=3", files=upload)
    assert ours.status_code == 200, ours.text
    expected = ours.json()["results"][0]["predictions"]
    theirs = handwritten_app(default_version(model)).post(f"/v1/models/{model}/classify?top_k=3",
                                               files=upload)
    assert theirs.status_code == 200, theirs.text
    answered = theirs.json()["predictions"]
    assert [p["label"] for p in answered][:1] == [p["label"] for p in expected][:1]
    assert answered[0]["score"] == pytest.approx(expected[0]["score"], abs=0.05)
