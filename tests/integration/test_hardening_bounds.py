"""Issue 26's crafted inputs, each held to a clear answer, never a 500 or a frozen worker:
scans of a progressive JPEG, very thin images, ``/v2`` outputs and batch sizes, explanations
through admission control, ``explain`` and ``first-layer`` parameters, the first layer of the
graph actually served, HTTP methods and headers, and what the public ``/readyz`` tells.

The same bytes make the figures in docs/hardening.md (``scripts/hardening_probe.py``).
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from hardening_probe import (  # noqa: E402
    blank_png,
    repeated_scans_jpeg,
    v2_json_body,
    v2_outputs_body,
)

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def client(make_client: Callable[..., Any], tiny_models: Path) -> Iterator[TestClient]:
    with make_client(tiny_models) as ready:
        yield ready


def _classify(client: TestClient, data: bytes, model: str = "tiny-grey") -> Any:
    return client.post(f"/v1/models/{model}/classify", files={"file": ("x", data)})


# 1. Progressive JPEG with repeated scans: refused from its markers, before decoding.

def test_repeated_scans_are_refused_before_decoding(client: TestClient) -> None:
    data = repeated_scans_jpeg()
    assert len(data) < 128 * 1024  # once decoded on the event loop, for 13 s
    tracemalloc.start()
    response = _classify(client, data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert response.status_code == 413, response.text
    assert response.json()["error"]["message"].startswith(
        "the 4800x4800 JPEG holds more than 100 scans; decoding passes over every pixel once "
        "per scan, and at this size at most 34 are accepted")
    assert peak < 20_000_000  # the picture (23 MB as grey) was never decoded


def test_a_jpeg_of_endless_segments_is_refused_at_once(client: TestClient) -> None:
    """8 million empty comment segments: reading stops after 4096 of them."""
    data = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 8_000_000 + b"\xff\xd9"
    response = client.post("/v1/models/tiny-grey/classify", content=data,
                           headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["message"] == (
        "the JPEG holds more than 4096 marker segments (cameras and encoders write tens): "
        "re-encode it")


def test_ordinary_progressive_jpegs_are_decoded(client: TestClient,
                                                 photo: Callable[[str], bytes]) -> None:
    from service.imaging import jpeg_layout
    from service.pipeline import _decode_inline

    image = Image.open(io.BytesIO(photo("chelsea"))).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", progressive=True)
    layout = jpeg_layout(out.getvalue())
    assert layout.progressive and layout.scans == 10 and layout.pixels == image.width * image.height
    assert not _decode_inline(out.getvalue())  # its cost follows its scans: in the pool
    assert _classify(client, out.getvalue(), "tiny-rgb").status_code == 200
    baseline = io.BytesIO()
    image.save(baseline, "JPEG")
    assert jpeg_layout(baseline.getvalue()).scans == 1 and _decode_inline(baseline.getvalue())


# 4. Very thin images: no side longer than 65,535 px, whatever the pixel count.

@pytest.mark.parametrize(("width", "height"), [(1, 49_000_000), (49_000_000, 1), (1, 70_000)])
def test_thin_images_are_refused_from_their_header(client: TestClient, width: int,
                                                   height: int) -> None:
    data = blank_png(width, height)
    tracemalloc.start()
    response = _classify(client, data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert response.status_code == 413, response.text
    assert response.json()["error"]["message"] == (
        f"the image is {width}x{height}: no side may be longer than 65535 pixels (decoding and "
        "resizing cost memory per row and per column); crop or scale it down before sending")
    assert peak < 50_000_000  # it took 2.8 GB


def test_four_thin_images_in_one_request_are_refused(client: TestClient) -> None:
    thin = blank_png(1, 49_000_000)
    response = client.post("/v1/models/tiny-grey/classify",
                           files=[("file", (f"{i}.png", thin)) for i in range(4)])
    assert response.status_code == 413
    assert response.json()["error"]["message"].startswith("image #1 ('0.png'): the image is "
                                                          "1x49000000")


def test_a_long_but_bounded_image_is_classified(client: TestClient) -> None:
    assert _classify(client, blank_png(2, 60_000)).status_code == 200


# 2. /v2: one output at most, the batch size checked before any tensor is built.

def test_v2_duplicate_outputs_are_refused(client: TestClient) -> None:
    body, length = v2_outputs_body(images=2, copies=100, side=28)
    body = body.replace(b'"shape": [2, 28, 28, 3]', b'"shape": [2, 28, 28, 1]')
    header = json.loads(body[:int(length)])
    header["inputs"][0]["parameters"]["binary_data_size"] = 2 * 784
    head = json.dumps(header).encode()
    response = client.post("/v2/models/tiny-grey/infer", content=head + bytes(2 * 784),
                           headers={HEADER: str(len(head))})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == (
        "the request names the same output more than once; this model has one output, "
        "'probabilities': ask for it once (or leave 'outputs' out)")


def test_v2_one_output_with_every_class_is_answered(client: TestClient) -> None:
    body = {"inputs": [{"name": "image", "shape": [64, 28, 28, 1], "datatype": "UINT8",
                        "data": [0] * (64 * 784)}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1000}}]}
    response = client.post("/v2/models/tiny-grey/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["shape"] == [64, 10] and len(output["data"]) == 640  # k capped at 10 classes


def test_v2_big_json_batch_is_refused_before_parsing(client: TestClient) -> None:
    body = v2_json_body()  # 31 MB, 10,000 images
    tracemalloc.start()
    response = client.post("/v2/models/tiny-grey/infer", content=body,
                           headers={"Content-Type": "application/json"})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("the JSON part is 31940081 bytes, more than the")
    assert peak < 3 * len(body)  # the body itself and its copies; it became +750 MB


def test_v2_batch_over_the_limit_is_refused_before_the_tensor(client: TestClient) -> None:
    size = 65 * 784
    head = json.dumps({"inputs": [{"name": "image", "shape": [65, 28, 28, 1],
                                   "datatype": "UINT8",
                                   "parameters": {"binary_data_size": size}}]}).encode()
    response = client.post("/v2/models/tiny-grey/infer", content=head + bytes(size),
                           headers={HEADER: str(len(head))})
    assert response.status_code == 400
    assert response.json()["error"] == ("batch of 65 images; at most 64 per request "
                                        "(CONVSERVE_MAX_IMAGES_PER_REQUEST)")


# 8, 9. explain parameters: 422 for digits int() refuses, a picture for any aspect ratio.

@pytest.mark.parametrize("wanted", ["²", "⁵", "፩", "1" * 4301, "0" * 30 + "1", "99"])
def test_explain_class_that_is_no_index_is_422(client: TestClient, wanted: str) -> None:
    response = client.post("/v1/models/tiny-grey/explain", params={"class": wanted},
                           files={"file": ("x.png", blank_png(28, 28))})
    if wanted == "0" * 30 + "1":  # leading zeros: still index 1
        assert response.status_code == 200, response.text
        assert response.json()["explained"]["index"] == 1
        return
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith("class:")


@pytest.mark.parametrize(("width", "height"), [(4096, 2), (2, 4096), (60_000, 1)])
def test_explain_png_of_any_aspect_ratio(client: TestClient, width: int, height: int) -> None:
    response = client.post("/v1/models/tiny-grey/explain", params={"format": "png"},
                           files={"file": ("x.png", blank_png(width, height))})
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert max(image.size) == 1024 and min(image.size) == 1


# 5. Explanations go through the batcher: admitted or refused like every other image.

def test_occlusion_is_queued_and_refused_when_the_queue_is_full(
        make_client: Callable[..., Any], tiny_models: Path) -> None:
    """A queue of 64 images cannot take occlusion's 65 at once: they go in two runs, and the
    answer is the same; an explanation is never computed beside the batcher."""
    with make_client(tiny_models, max_queue_size=64) as client:
        response = client.post("/v1/models/tiny-grey/explain", params={"method": "occlusion"},
                               files={"file": ("x.png", blank_png(28, 28))})
        assert response.status_code == 200, response.text
        assert response.json()["cost"]["images"] == 65


def hold_inference(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """From now on every run waits: ``held`` is set once one does, ``release`` lets them go."""
    from service.model_version import ModelVersion

    held, release = threading.Event(), threading.Event()
    infer = ModelVersion.infer

    def slow(self: ModelVersion, batch: np.ndarray, alone: bool | None = None) -> np.ndarray:
        held.set()
        release.wait(30)
        return infer(self, batch, alone)

    monkeypatch.setattr(ModelVersion, "infer", slow)
    return held, release


def test_explanations_wait_in_the_batchers_queue(make_client: Callable[..., Any],
                                                 tiny_models: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With inference held, one occlusion's 65 images fill a 100-image queue: a second
    explanation and a classify of the same model get 503 + Retry-After, at once."""
    with make_client(tiny_models, max_queue_size=100, instances=1) as client:
        held, release = hold_inference(monkeypatch)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as background:
            first = background.submit(client.post, "/v1/models/tiny-grey/explain",
                                      params={"method": "occlusion"},
                                      files={"file": ("x.png", blank_png(28, 28))})
            assert held.wait(30)
            second = client.post("/v1/models/tiny-grey/explain", params={"method": "occlusion"},
                                 files={"file": ("x.png", blank_png(28, 28))})
            release.set()
            assert second.status_code == 503, second.text
            assert second.headers["retry-after"] == "1"
            assert "images queued and the limit is 100" in second.json()["error"]["message"]
            assert first.result(60).status_code == 200


# 10. first-layer: the graph loaded, not the file; int8 filters dequantized.

@pytest.fixture()
def own_models(tmp_path: Path, tiny_models: Path) -> Path:
    shutil.copytree(tiny_models, tmp_path / "models")
    return tmp_path / "models"


def test_first_layer_is_the_loaded_graph(make_client: Callable[..., Any], own_models: Path,
                                         photo: Callable[[str], bytes]) -> None:
    graph = own_models / "tiny-rgb" / "1" / "model.onnx"
    with make_client(own_models) as client:
        served = client.get("/v1/models/tiny-rgb/versions/1/first-layer")
        assert served.status_code == 200
        graph.write_bytes((own_models / "tiny-rgb" / "2" / "model.onnx").read_bytes())
        replaced = client.get("/v1/models/tiny-rgb/versions/1/first-layer")
        assert replaced.json()["filters"] == served.json()["filters"]  # still what is served
        graph.write_bytes(b"")  # truncated
        truncated = client.post("/v1/models/tiny-rgb/versions/1/first-layer",
                                files={"file": ("c.jpg", photo("chelsea"))})
        assert truncated.status_code == 200, truncated.text
        assert truncated.json()["filters"] == served.json()["filters"]
        assert len(truncated.json()["feature_maps"]) == 8


def test_first_layer_of_a_card_naming_its_graph(make_client: Callable[..., Any],
                                                own_models: Path) -> None:
    version = own_models / "tiny-grey" / "1"
    (version / "model.onnx").rename(version / "net.onnx")
    card = json.loads((version / "model.json").read_text())
    card["files"] = {"model": "net.onnx"}
    card["onnx_sha256"] = {"net.onnx": card["onnx_sha256"]}
    (version / "model.json").write_text(json.dumps(card))
    with make_client(own_models) as client:
        response = client.get("/v1/models/tiny-grey/first-layer")
        assert response.status_code == 200, response.text
        assert response.json()["shape"] == [8, 1, 3, 3]


def test_first_layer_of_an_int8_model_is_dequantized(
        make_client: Callable[..., Any], shipped_repository: Callable[..., Path]) -> None:
    root = shipped_repository("imagenet-mobilenetv2", "imagenet-mobilenetv2-int8")
    with make_client(root) as client:
        floats = client.get("/v1/models/imagenet-mobilenetv2/first-layer").json()
        response = client.get("/v1/models/imagenet-mobilenetv2-int8/first-layer")
        assert response.status_code == 200, response.text
        int8 = response.json()
    assert int8["shape"] == floats["shape"] == [32, 3, 3, 3]
    # Each filter shown scaled by its own largest weight: int8's per-channel steps are 1/127.
    difference = np.abs(np.array(int8["filters"]) - np.array(floats["filters"]))
    assert difference.max() < 0.02, difference.max()


# 12, 14. HTTP details and the public readiness answer.

@pytest.mark.parametrize("path", ["/", "/v1/models", "/v2", "/v2/health/live",
                                  "/v2/health/ready", "/healthz", "/v1/models/tiny-grey"])
def test_head_answers_wherever_get_does(client: TestClient, path: str) -> None:
    head, get = client.head(path), client.get(path)
    assert head.status_code == get.status_code == 200, (path, head.text)
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/v1/models/tiny-grey/first-layer", "GET, HEAD, POST"),
    ("DELETE", "/healthz", "GET, HEAD"),
    ("PUT", "/v1/models/tiny-grey/classify", "POST"),
])
def test_405_lists_every_method_of_the_path(client: TestClient, method: str, path: str,
                                            allow: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(make_client: Callable[..., Any],
                                               tiny_models: Path, scheme: str) -> None:
    with make_client(tiny_models, api_key="s3cret") as client:
        assert client.get("/v1/models", headers={"Authorization": f"{scheme} s3cret"}
                          ).status_code == 200
        wrong = client.get("/v1/models", headers={"Authorization": f"{scheme} nope"})
        assert wrong.status_code == 401


def test_public_readyz_keeps_paths_and_contents_for_the_log(make_client: Callable[..., Any],
                                                            own_models: Path) -> None:
    (own_models / "tiny-rgb" / "default_version").write_text("v1-secret")
    with make_client(own_models, ready=False) as client:
        failed = client.post("/v1/repository/reload").json()["failed"]
        assert str(own_models) in failed["tiny-rgb/default_version"]  # the authenticated API
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert str(own_models) not in ready.text and "secret" not in ready.text
        assert ready.json()["error"]["message"].startswith(
            "failed to load: tiny-rgb/default_version (the server log")


def test_a_class_activation_map_waits_in_the_queue_too(
        make_client: Callable[..., Any], shipped_model: Callable[[str], Path], tmp_path: Path,
        photo: Callable[[str], bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """A CAM explanation is one image in the version's queue: with the queue full it is refused
    at once (503 + Retry-After) instead of running beside the batcher; once it drains, it runs."""
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "fer-minixception").symlink_to(shipped_model("fer-minixception"))
    face = {"file": ("face.jpg", photo("face-happy"))}
    path = "/v1/models/fer-minixception"
    with make_client(tmp_path, max_queue_size=1, instances=1) as client:
        held, release = hold_inference(monkeypatch)
        with ThreadPoolExecutor(2) as background:
            running = background.submit(client.post, f"{path}/classify", files=face)
            assert held.wait(30)
            queued = background.submit(client.post, f"{path}/classify", files=face)
            deadline = time.monotonic() + 30
            while client.get("/metrics").text.count(
                    'convserve_queue_depth{model="fer-minixception",version="1"} 1.0') == 0:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            refused = client.post(f"{path}/explain", params={"method": "cam"}, files=face)
            release.set()
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert running.result(60).status_code == queued.result(60).status_code == 200
        answer = client.post(f"{path}/explain", params={"method": "cam"}, files=face)
        assert answer.status_code == 200 and answer.json()["method"] == "cam"
