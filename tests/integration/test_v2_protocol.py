"""The Open Inference Protocol with the real Triton client against a real uvicorn process.

``tritonclient.http.InferenceServerClient`` talks to ``python -m service serve`` on 127.0.0.1:
health, metadata, inference with binary and with JSON tensors, the classification extension, the
batcher, and errors (400/404/503 as ``{"error": "..."}``). Inputs are real photos turned into the
model's tensor by ``service.imaging.prepare``; every answer is checked against ONNX Runtime run
directly on the same ``model.onnx``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from conftest import serve_models
from tritonclient.utils import InferenceServerException

from service.imaging import InputSpec, prepare

PHOTOS = ("chelsea", "coffee", "rocket")
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
BATCH_DELAY_MS = 300


@pytest.fixture(scope="module")
def models(tiny_models: Path, shipped_model: Callable[[str], Path],
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models and the shipped ImageNet MobileNetV2 (links in a temporary dir)."""
    root = tmp_path_factory.mktemp("v2-models")
    for model in tiny_models.iterdir():
        (root / model.name).symlink_to(model, target_is_directory=True)
    (root / "imagenet-mobilenetv2").symlink_to(shipped_model("imagenet-mobilenetv2"), True)
    return root


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[str]:
    """``host:port`` of a ready service over ``models``."""
    with serve_models(models, CONVSERVE_MAX_QUEUE_DELAY_MS=str(BATCH_DELAY_MS)) as (_, url):
        yield url.removeprefix("http://")


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server, concurrency=4) as tc:
        yield tc


def _meta(models: Path, name: str, version: int) -> dict:
    return json.loads((models / name / str(version) / "model.json").read_text())


def _batch(models: Path, photo: Callable[[str], bytes], name: str, version: int) -> np.ndarray:
    """Real photos as the model's ``[N, H, W, C]`` uint8 tensor."""
    spec = InputSpec.from_json(_meta(models, name, version)["input"])
    return np.stack([prepare(photo(p), spec, 50_000_000).array for p in PHOTOS])


def _reference(models: Path, name: str, version: int, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(models / name / str(version) / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"image": batch})[0]


def _input(batch: np.ndarray, binary: bool = True) -> triton.InferInput:
    """The ``image`` input of an infer request, holding ``batch``."""
    tensor = triton.InferInput("image", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


def _metric(server: str, name: str, model: str) -> float:
    for line in httpx.get(f"http://{server}/metrics").text.splitlines():
        if line.startswith(f'{name}{{model="{model}",version="2"}}'):
            return float(line.split()[-1])
    return 0.0


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "convserve"
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])


def test_model_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("tiny-rgb")
    assert client.is_model_ready("tiny-rgb", "1")
    assert client.is_model_ready("tiny-faces")  # loaded, even if it cannot infer here
    assert not client.is_model_ready("tiny-rgb", "7")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata("tiny-rgb")
    assert meta["name"] == "tiny-rgb"
    assert meta["versions"] == ["2", "1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    grey = client.get_model_metadata("tiny-grey", "1")
    assert grey["versions"] == ["1"]
    assert grey["inputs"][0]["shape"] == [-1, 28, 28, 1]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_onnx_runtime(client: triton.InferenceServerClient, tiny_models: Path,
                                    photo: Callable[[str], bytes], binary: bool) -> None:
    batch = _batch(tiny_models, photo, "tiny-rgb", 2)
    tensor = _input(batch, binary)
    result = client.infer("tiny-rgb", [tensor], request_id="req-7", outputs=[
        triton.InferRequestedOutput("probabilities", binary_data=binary)])
    got = result.as_numpy("probabilities")
    response = result.get_response()
    assert response["model_name"] == "tiny-rgb" and response["model_version"] == "2"
    assert response["id"] == "req-7"
    assert ("parameters" in response["outputs"][0]) is binary  # binary_data_size or JSON data
    assert got.shape == (len(PHOTOS), 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(tiny_models, "tiny-rgb", 2, batch), atol=1e-6)


def test_infer_one_version_and_default_outputs(client: triton.InferenceServerClient,
                                               tiny_models: Path,
                                               photo: Callable[[str], bytes]) -> None:
    batch = _batch(tiny_models, photo, "tiny-grey", 1)
    tensor = _input(batch)
    result = client.infer("tiny-grey", [tensor], model_version="1")  # no outputs: all, binary
    expected = _reference(tiny_models, "tiny-grey", 1, batch)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
    rgb = _batch(tiny_models, photo, "tiny-rgb", 1)
    tensor = _input(rgb)
    old = client.infer("tiny-rgb", [tensor], model_version="1").as_numpy("probabilities")
    np.testing.assert_allclose(old, _reference(tiny_models, "tiny-rgb", 1, rgb), atol=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension(client: triton.InferenceServerClient, tiny_models: Path,
                                  photo: Callable[[str], bytes], binary: bool) -> None:
    batch = _batch(tiny_models, photo, "tiny-rgb", 2)
    tensor = _input(batch, binary)
    result = client.infer("tiny-rgb", [tensor], outputs=[
        triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)])
    strings = result.as_numpy("probabilities")
    assert strings.shape == (len(PHOTOS), 3)
    assert result.get_response()["outputs"][0]["datatype"] == "BYTES"
    expected = _reference(tiny_models, "tiny-rgb", 2, batch)
    labels = _meta(tiny_models, "tiny-rgb", 2)["labels"]
    for row, answers in zip(expected, strings, strict=True):
        decoded = [(a.decode() if isinstance(a, bytes) else a).split(":") for a in answers]
        best = np.argsort(-row)[:3]
        assert [int(d[1]) for d in decoded] == best.tolist()  # "score:index:label"
        assert [d[2] for d in decoded] == [labels[i] for i in best]
        np.testing.assert_allclose([float(d[0]) for d in decoded], row[best], atol=1e-6)


def test_real_photo_classified_by_imagenet(client: triton.InferenceServerClient,
                                          models: Path, photo: Callable[[str], bytes]) -> None:
    meta = client.get_model_metadata("imagenet-mobilenetv2")
    assert meta["inputs"][0]["shape"] == [-1, 224, 224, 3]
    spec = InputSpec.from_json(_meta(models, "imagenet-mobilenetv2", int(meta["versions"][0]))
                               ["input"])
    cat = prepare(photo("chelsea"), spec, 50_000_000).array[None]  # the client's own decoding
    tensor = _input(cat)
    result = client.infer("imagenet-mobilenetv2", [tensor], outputs=[
        triton.InferRequestedOutput("probabilities", class_count=3)])
    score, index, label = result.as_numpy("probabilities")[0][0].decode().split(":", 2)
    assert label in CATS and 0.3 < float(score) <= 1.0
    assert label == _meta(models, "imagenet-mobilenetv2", 1)["labels"][int(index)]


def test_model_config_for_triton_tools(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("tiny-rgb")
    assert config["input"] == [{"name": "image", "data_type": "TYPE_UINT8",
                                "format": "FORMAT_NHWC", "dims": [32, 32, 3]}]
    assert config["output"][0]["dims"] == [10]
    assert config["max_batch_size"] >= 1
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == BATCH_DELAY_MS * 1000


def test_requests_share_the_dynamic_batcher(client: triton.InferenceServerClient, server: str,
                                            tiny_models: Path,
                                            photo: Callable[[str], bytes]) -> None:
    batch = _batch(tiny_models, photo, "tiny-rgb", 2)
    runs = _metric(server, "convserve_inference_exec_count_total", "tiny-rgb")
    images = _metric(server, "convserve_inference_count_total", "tiny-rgb")

    pending = []
    for index in range(len(PHOTOS)):  # the client's own concurrent requests (gevent)
        tensor = _input(batch[index:index + 1])
        pending.append(client.async_infer("tiny-rgb", [tensor]))
    rows = [request.get_result().as_numpy("probabilities")[0] for request in pending]
    np.testing.assert_allclose(rows, _reference(tiny_models, "tiny-rgb", 2, batch), atol=1e-6)
    assert _metric(server, "convserve_inference_count_total", "tiny-rgb") == images + len(PHOTOS)
    # Three requests arriving within the 300 ms queue delay: fewer ONNX Runtime runs than images.
    assert _metric(server, "convserve_inference_exec_count_total", "tiny-rgb") < runs + len(PHOTOS)


def test_client_sees_the_error_message(client: triton.InferenceServerClient) -> None:
    tensor = _input(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("no-such-model", [tensor])
    assert caught.value.status() == "404"
    assert "no model named 'no-such-model'" in caught.value.message()
    wrong = _input(np.zeros((1, 28, 28, 3), np.uint8))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("tiny-rgb", [wrong])
    assert caught.value.status() == "400"
    assert "this model takes [N, 32, 32, 3]" in caught.value.message()


def _post(server: str, path: str, body: bytes | dict, **headers: str) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return httpx.post(f"http://{server}{path}", content=content, headers=headers, timeout=30)


def _image(shape: list[int], datatype: str = "UINT8", **extra: object) -> dict:
    return {"inputs": [{"name": "image", "shape": shape, "datatype": datatype, **extra}]}


def _binary(size: int, cut: int = 0, length: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A binary request: JSON header, then ``size`` bytes; the header length ``cut`` short."""
    header = json.dumps(_image([1, 32, 32, 3], parameters={"binary_data_size": 3072})).encode()
    stated = length if length is not None else str(len(header) - cut)
    return header + bytes(size), {"Inference-Header-Content-Length": stated}


@pytest.mark.parametrize(("path", "body", "headers", "status", "message"), [
    ("/v2/models/tiny-rgb/infer", _image([1, 32, 32, 3], "FP32", data=[0.0] * 3072), {}, 400,
     "has datatype 'FP32'; this model takes UINT8"),
    ("/v2/models/tiny-rgb/infer", _image([1, 32, 32, 3], data=[0] * 3071), {}, 400,
     "needs 3072 numbers"),
    ("/v2/models/tiny-rgb/infer", _image([1, 32, 32, 3], data=[300] * 3072), {}, 400,
     "UINT8 values are integers in [0, 255]"),
    ("/v2/models/tiny-rgb/infer", {"inputs": [{"name": "pixels", "shape": [1, 32, 32, 3],
                                               "datatype": "UINT8", "data": [0] * 3072}]}, {}, 400,
     "unknown input 'pixels'; this model's input is 'image'"),
    ("/v2/models/tiny-rgb/infer", {**_image([1, 32, 32, 3], data=[0] * 3072),
                                   "outputs": [{"name": "logits"}]}, {}, 400,
     "unknown output 'logits'"),
    ("/v2/models/tiny-rgb/infer", b"{not json", {}, 400, "is not valid JSON"),
    ("/v2/models/tiny-rgb/infer", *_binary(100, cut=5), 400, "is not valid JSON"),
    ("/v2/models/tiny-rgb/infer", *_binary(100), 400,
     "binary part holds 100 bytes and shape [1, 32, 32, 3] needs 3072"),
    ("/v2/models/tiny-rgb/infer", *_binary(3072, length="x"), 400,
     "Inference-Header-Content-Length must be an integer"),
    ("/v2/models/tiny-faces/infer", _image([1, 12, 12, 3], data=[0] * 432), {}, 422,
     "model 'tiny-faces' (face-detection) cannot classify images"),
    ("/v2/models/no-such-model/infer", _image([1, 32, 32, 3], data=[0] * 3072), {}, 404,
     "no model named 'no-such-model'"),
    ("/v2/models/tiny-rgb/versions/9/infer", _image([1, 32, 32, 3], data=[0] * 3072), {}, 404,
     "has no version '9'; versions: 2, 1"),
    ("/v2/models/tiny-rgb/explain", {}, {}, 404, "no such endpoint"),
])
def test_errors(server: str, path: str, body: bytes | dict, headers: dict[str, str],
                status: int, message: str) -> None:
    response = _post(server, path, body, **headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and message in error, error


def test_not_ready_is_503(make_client: Callable, tiny_models: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "tiny-rgb", models / "tiny-rgb")
    broken = models / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    (broken / "model.json").write_text(json.dumps({"name": "broken", "labels": ["a"]}))
    with make_client(models, ready=False) as http:
        deadline = time.monotonic() + 30
        while http.get("/v2/models/tiny-rgb/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        response = http.get("/v2/health/ready")
        assert response.status_code == 503
        assert "failed" in response.json()["error"]
        assert http.get("/v2/health/live").status_code == 200


def test_plain_json_request_without_a_client(server: str, tiny_models: Path,
                                             photo: Callable[[str], bytes]) -> None:
    """What a curl user sends: JSON tensors in, JSON tensors out (no binary, no outputs)."""
    batch = _batch(tiny_models, photo, "tiny-grey", 1)[:1]
    response = _post(server, "/v2/models/tiny-grey/versions/1/infer",
                     _image(list(batch.shape), data=batch.tolist()))  # nested lists are fine
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert "Inference-Header-Content-Length" not in response.headers
    output = response.json()["outputs"][0]
    assert output["name"] == "probabilities" and output["shape"] == [1, 10]
    np.testing.assert_allclose(output["data"],
                               _reference(tiny_models, "tiny-grey", 1, batch).ravel(), atol=1e-6)
