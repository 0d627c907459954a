"""The Open Inference Protocol over gRPC, with tritonclient's gRPC client, against live servers.

One worker and two (``--workers 2``: both bind the gRPC port with SO_REUSEPORT): health,
metadata, configuration, inference with raw uint8 NHWC tensors and ``class_count``, and the
statistics extension, for the shipped ``mnist-lenet5`` and ``imagenet-mobilenetv2``. Every answer
is compared with HTTP ``/v2`` (tritonclient's HTTP client) and ``/v1`` for the same pixels: the
service's own decoding of real photos (``service.imaging.prepare``).

This process never imports ``service.grpc``'s generated messages: they and tritonclient's
register the same protocol names (``inference.*``) in protobuf's default pool.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from conftest import (
    free_port,
    metric_by_worker,
    serve_models,
    wait_workers_ready,
    worker_run_dir,
)
from tritonclient.utils import InferenceServerException

from service.imaging import InputSpec, prepare

MODELS = ("mnist-lenet5", "imagenet-mobilenetv2")
PHOTOS = {"mnist-lenet5": ("digit.png", "shoe.png"), "imagenet-mobilenetv2": ("chelsea", "coffee")}
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="module")
def image(photo: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """``image("digit.png")`` from samples/, ``image("chelsea")`` from training.assets."""
    return lambda name: (SAMPLES / name).read_bytes() if "." in name else photo(name)


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def server(request: pytest.FixtureRequest,
           shipped_repository: Callable[..., Path]) -> Iterator[tuple[str, str, list[int]]]:
    """``(http host:port, grpc host:port, worker pids)`` of a ready service over the two
    shipped models (no pids with one worker)."""
    models = shipped_repository(*MODELS)
    grpc_port = free_port()
    with serve_models(models, grpc_port=grpc_port, CONVSERVE_WORKERS=str(request.param),
                      CONVSERVE_CPUS="2") as (process, url):
        workers = wait_workers_ready(process.pid, request.param) if request.param > 1 else []
        yield url.removeprefix("http://"), f"127.0.0.1:{grpc_port}", workers


@pytest.fixture(scope="module")
def clients(server: tuple[str, str, list[int]]) -> Iterator[tuple[tgrpc.InferenceServerClient,
                                                       thttp.InferenceServerClient]]:
    with tgrpc.InferenceServerClient(server[1]) as g, thttp.InferenceServerClient(server[0]) as h:
        yield g, h


def _pixels(model: Path, image: Callable[[str], bytes], name: str) -> np.ndarray:
    """The photos as the model's ``[N, H, W, C]`` uint8 tensor, decoded as /v1 decodes them."""
    spec = InputSpec.from_json(json.loads((model / "1" / "model.json").read_text())["input"])
    return np.stack([prepare(image(p), spec, 50_000_000).array for p in PHOTOS[name]])


def test_health_and_server_metadata(clients: tuple) -> None:
    g, h = clients
    assert g.is_server_live() and g.is_server_ready()
    meta, http_meta = g.get_server_metadata(as_json=True), h.get_server_metadata()
    assert (meta["name"], meta["version"]) == (http_meta["name"], http_meta["version"])
    assert meta["extensions"] == ["classification", "statistics"]
    assert set(http_meta["extensions"]) == {"binary_tensor_data", *meta["extensions"]}


@pytest.mark.parametrize("name", MODELS)
def test_model_metadata_and_config_as_http(clients: tuple, name: str) -> None:
    g, h = clients
    assert g.is_model_ready(name) and g.is_model_ready(name, "1")
    assert not g.is_model_ready(name, "7") and not g.is_model_ready("no-such-model")
    meta, http_meta = g.get_model_metadata(name, as_json=True), h.get_model_metadata(name)
    for tensors in ("inputs", "outputs"):  # protobuf's JSON writes int64 as strings
        for tensor in meta[tensors]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]
    http_meta.pop("parameters")  # KServe's ModelMetadataResponse has no parameters
    assert meta == http_meta
    config, http_config = g.get_model_config(name).config, h.get_model_config(name)
    assert config.name == http_config["name"] == name
    assert config.max_batch_size == http_config["max_batch_size"]
    assert list(config.input[0].dims) == http_config["input"][0]["dims"]
    assert tgrpc.model_config_pb2.ModelInput.Format.Name(config.input[0].format) == "FORMAT_NHWC"
    assert list(config.output[0].dims) == http_config["output"][0]["dims"]


@pytest.mark.parametrize("name", MODELS)
def test_infer_answers_as_http_v2_and_v1(clients: tuple, server: tuple[str, str, list[int]],
                                         name: str, shipped_model: Callable[[str], Path],
                                         image: Callable[[str], bytes]) -> None:
    g, h = clients
    batch = _pixels(shipped_model(name), image, name)
    tensor = tgrpc.InferInput("image", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)  # raw_input_contents
    result = g.infer(name, [tensor], request_id="req-1")
    got = result.as_numpy("probabilities")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (name, "1", "req-1")
    http_tensor = thttp.InferInput("image", list(batch.shape), "UINT8")
    http_tensor.set_data_from_numpy(batch, binary_data=True)
    expected = h.infer(name, [http_tensor]).as_numpy("probabilities")
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    # /v1 decodes the same photos itself: the same top classes and scores
    for row, photo_name in zip(got, PHOTOS[name], strict=True):
        answer = httpx.post(f"http://{server[0]}/v1/models/{name}/classify?top_k=3",
                            files={"file": (photo_name, image(photo_name))}).json()
        predictions = answer["results"][0]["predictions"]
        assert [p["index"] for p in predictions] == np.argsort(-row, kind="stable")[:3].tolist()
        np.testing.assert_allclose([p["score"] for p in predictions],
                                   np.sort(row)[::-1][:3], rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_classification_extension_as_http(clients: tuple, name: str,
                                          shipped_model: Callable[[str], Path],
                                          image: Callable[[str], bytes]) -> None:
    g, h = clients
    batch = _pixels(shipped_model(name), image, name)
    tensor = tgrpc.InferInput("image", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    strings = g.infer(name, [tensor], outputs=[
        tgrpc.InferRequestedOutput("probabilities", class_count=3)]).as_numpy("probabilities")
    http_tensor = thttp.InferInput("image", list(batch.shape), "UINT8")
    http_tensor.set_data_from_numpy(batch, binary_data=True)
    expected = h.infer(name, [http_tensor], outputs=[
        thttp.InferRequestedOutput("probabilities", class_count=3)]).as_numpy("probabilities")
    assert strings.shape == (len(batch), 3)
    assert strings.tolist() == expected.tolist()
    if name == "imagenet-mobilenetv2":
        assert strings[0][0].decode().split(":", 2)[2] in {"tabby", "tiger cat", "Egyptian cat"}


def test_statistics_as_http(clients: tuple, shipped_model: Callable[[str], Path],
                            image: Callable[[str], bytes]) -> None:
    g, h = clients
    name = "mnist-lenet5"
    batch = _pixels(shipped_model(name), image, name)
    tensor = tgrpc.InferInput("image", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    before = g.get_inference_statistics(name).model_stats[0]
    g.infer(name, [tensor])
    stats = g.get_inference_statistics(name).model_stats[0]
    assert (stats.name, stats.version) == (name, "1")
    assert stats.inference_count == before.inference_count + len(batch)
    assert stats.execution_count >= before.execution_count + 1
    assert stats.inference_stats.success.count == before.inference_stats.success.count + 1
    assert stats.inference_stats.success.ns > before.inference_stats.success.ns
    assert stats.inference_stats.compute_infer.ns > 0 and stats.inference_stats.queue.count > 0
    assert stats.last_inference > 0 and stats.batch_stats
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    http_stats = h.get_inference_statistics(name)["model_stats"][0]  # the same series
    assert http_stats["inference_count"] == stats.inference_count
    assert http_stats["inference_stats"]["success"]["count"] == \
        stats.inference_stats.success.count
    assert [b["batch_size"] for b in http_stats["batch_stats"]] == \
        [b.batch_size for b in stats.batch_stats]
    every = g.get_inference_statistics().model_stats
    assert {s.name for s in every} == set(MODELS)


def test_errors_are_statuses_with_http_messages(clients: tuple) -> None:
    g, h = clients
    wrong = np.zeros((1, 28, 28, 3), np.uint8)
    for model, batch, code in (("no-such-model", np.zeros((1, 28, 28, 1), np.uint8),
                                grpc.StatusCode.NOT_FOUND),
                               ("mnist-lenet5", wrong, grpc.StatusCode.INVALID_ARGUMENT)):
        tensor = tgrpc.InferInput("image", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        with pytest.raises(InferenceServerException) as over_grpc:
            g.infer(model, [tensor])
        http_tensor = thttp.InferInput("image", list(batch.shape), "UINT8")
        http_tensor.set_data_from_numpy(batch, binary_data=True)
        with pytest.raises(InferenceServerException) as over_http:
            h.infer(model, [http_tensor])
        assert over_grpc.value.status() == str(code)
        assert over_grpc.value.message() == over_http.value.message()


@pytest.mark.parametrize("server", [2], indirect=True, ids=["2-workers"])
def test_every_worker_serves_grpc(server: tuple[str, str, list[int]]) -> None:
    """With --workers 2 the kernel spreads new connections over both workers' listeners."""
    assert len(server[2]) == 2
    metrics_dir = worker_run_dir(server[2][0]) / "metrics"
    route = "/inference.GRPCInferenceService/ServerLive"
    for _ in range(100):  # a new connection each time (channels share none)
        with tgrpc.InferenceServerClient(server[1], channel_args=[
                ("grpc.use_local_subchannel_pool", 1)]) as client:
            assert client.is_server_live()
        served = metric_by_worker(metrics_dir, "convserve_requests_total", route=route)
        if all(served.get(pid, 0) > 0 for pid in server[2]):
            return
    raise AssertionError(f"gRPC calls by worker: {served}")
