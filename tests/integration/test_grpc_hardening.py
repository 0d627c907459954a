"""gRPC's ModelInfer on bad input, the API key, deadlines and cancellation, and SIGTERM.

Requests are built with tritonclient's own protobuf messages and sent through a raw stub, so
that each field can be wrong on purpose: wrong datatypes, shapes whose product overflows, raw
contents of the wrong length, both contents and raw, unknown parameters, huge messages, and a
seeded stream of random mutations. Each gets a clean status (never INTERNAL or UNKNOWN, never a
hang) and the server keeps serving.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from conftest import free_port, serve_models
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

KEY = "s3cret-key"
MAX_BODY = 1_000_000
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
CLEAN = {grpc.StatusCode.OK, INVALID, NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def server(shipped_repository: Callable[..., Path]) -> Iterator[tuple[str, str]]:
    """``(http url, grpc address)``: lenet5 with an API key, a 1 MB body limit, 300 ms batching
    delay (a request waits for company: time to cancel it)."""
    grpc_port = free_port()
    with serve_models(shipped_repository("mnist-lenet5"), grpc_port=grpc_port,
                      CONVSERVE_API_KEY=KEY, CONVSERVE_MAX_BODY_BYTES=str(MAX_BODY),
                      CONVSERVE_MAX_PENDING_UPLOAD_BYTES=str(MAX_BODY),
                      CONVSERVE_MAX_QUEUE_DELAY_MS="300",
                      CONVSERVE_MAX_IMAGES_PER_REQUEST="8") as (_, url):
        yield url, f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def stub(server: tuple[str, str]) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server[1], options=[
            ("grpc.max_send_message_length", -1)]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


AUTH = (("authorization", f"Bearer {KEY}"),)


def _request(shape: tuple[int, ...] = (1, 28, 28, 1), datatype: str = "UINT8",
             raw: bytes | None = None, **fields: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mnist-lenet5", **fields)
    request.inputs.add(name="image", datatype=datatype, shape=shape)
    request.raw_input_contents.append(bytes(int(np.prod(shape))) if raw is None else raw)
    return request


def _call(stub: service_pb2_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest,
          ) -> tuple[grpc.StatusCode, str]:
    try:
        stub.ModelInfer(request, metadata=AUTH, timeout=30)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def _contents_and_raw() -> pb.ModelInferRequest:
    request = _request()
    request.inputs[0].contents.uint_contents.extend([0] * 784)
    return request


def _typed(field: str, count: int = 784, datatype: str = "UINT8") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mnist-lenet5")
    tensor = request.inputs.add(name="image", datatype=datatype, shape=(1, 28, 28, 1))
    getattr(tensor.contents, field).extend([1] * count)
    return request


def _renamed() -> pb.ModelInferRequest:
    request = _request()
    request.inputs[0].name = "pixels"
    return request


def _with_parameter(where: str, key: str, **value: object) -> pb.ModelInferRequest:
    request = _request()
    target = {"request": request, "input": request.inputs[0],
              "output": request.outputs.add(name="probabilities")}[where]
    target.parameters[key].CopyFrom(pb.InferParameter(**value))
    return request


CASES = [
    ("wrong datatype", _request(datatype="FP32", raw=bytes(784 * 4)), INVALID,
     "input 'image' has datatype 'FP32'; this model takes UINT8"),
    ("unknown datatype", _request(datatype="COMPLEX", raw=bytes(784)), INVALID,
     "has datatype 'COMPLEX'"),
    ("overflowing shape", _request(shape=(2**62, 2**62, 28, 1), raw=b""), INVALID,
     "has shape [4611686018427387904, 4611686018427387904, 28, 1]"),
    ("huge batch", _request(shape=(2**62, 28, 28, 1), raw=b""), INVALID,
     "batch of 4611686018427387904 images; at most 8 per request"),
    ("negative shape", _request(shape=(-1, 28, 28, 1), raw=b""), INVALID,
     "inputs.0.shape.0: Input should be greater than or equal to 0"),
    ("raw too short", _request(raw=bytes(783)), INVALID,
     "input 'image': raw_input_contents[0] holds 783 bytes; shape [1, 28, 28, 1] of UINT8 "
     "needs 784"),
    ("raw too long", _request(raw=bytes(785)), INVALID, "holds 785 bytes"),
    ("two raw entries", _request(raw_input_contents=[b"x"]), INVALID,
     "raw_input_contents holds 2 entries for 1 inputs"),
    ("contents and raw", _contents_and_raw(), INVALID,
     "input 'image' has both contents and raw_input_contents"),
    ("contents in the wrong field", _typed("fp32_contents"), INVALID,
     "UINT8 elements go in contents.uint_contents, not fp32_contents"),
    ("typed contents", _typed("uint_contents"), grpc.StatusCode.OK, ""),
    ("too few contents", _typed("uint_contents", 783), INVALID,
     "input 'image': the contents hold 783 values, shape [1, 28, 28, 1] needs 784"),
    ("too many contents", _typed("uint_contents", 200_000), INVALID,  # read in the pool
     "the contents hold 200000 values"),
    ("no data", pb.ModelInferRequest(model_name="mnist-lenet5", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8",
                                              shape=(1, 28, 28, 1))]), INVALID,
     "input 'image' has no data"),
    ("no inputs", pb.ModelInferRequest(model_name="mnist-lenet5"), INVALID,
     "send exactly one input, 'image' (UINT8, shape [N, 28, 28, 1])"),
    ("unknown input", _renamed(), INVALID,
     "unknown input 'pixels'; this model's input is 'image'"),
    ("unknown output", _request(outputs=[
        pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]), INVALID,
     "unknown output 'logits'; this model has one output, 'probabilities'"),
    ("the output twice", _request(outputs=[
        pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")] * 2), INVALID,
     "the request names the same output more than once; this model has one output"),
    ("classification as a string", _with_parameter("output", "classification",
                                                   string_param="3"), INVALID,
     "outputs.0.parameters.classification: Input should be a valid integer"),
    ("negative classification", _with_parameter("output", "classification", int64_param=-2),
     INVALID, "outputs.0.parameters.classification: Input should be greater than or equal"),
    ("unknown request parameter", _with_parameter("request", "priority", int64_param=9),
     grpc.StatusCode.OK, ""),
    ("unknown input parameter", _with_parameter("input", "color", string_param="red"),
     grpc.StatusCode.OK, ""),
    ("empty parameter", _with_parameter("request", "nothing"), grpc.StatusCode.OK, ""),
    ("unknown model", pb.ModelInferRequest(model_name="nope"), NOT_FOUND, "'nope'"),
    ("unknown version", _request(model_version="9"), NOT_FOUND,
     "model 'mnist-lenet5' has no version '9'; versions: 1"),
    ("huge message", _request(shape=(2, 28, 28, 1), raw=bytes(MAX_BODY + 1)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
]


@pytest.mark.parametrize(("case", "request_", "code", "message"), CASES,
                         ids=[case[0] for case in CASES])
def test_bad_requests_get_clean_statuses(stub: service_pb2_grpc.GRPCInferenceServiceStub,
                                         case: str, request_: pb.ModelInferRequest,
                                         code: grpc.StatusCode, message: str) -> None:
    got, details = _call(stub, request_)
    assert got == code, (case, got, details)
    assert message in details, (case, details)


def test_typed_contents_out_of_range(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = _typed("uint_contents")
    request.inputs[0].contents.uint_contents[5] = 256
    assert _call(stub, request) == (INVALID, "input 'image': UINT8 values are integers in "
                                             "[0, 255]")


def test_random_mutations_get_clean_statuses(
        stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    generator = random.Random(23)
    base = _request(outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(
        name="probabilities")]).SerializeToString()
    seen = set()
    for _ in range(300):
        data = bytearray(base)
        for _ in range(generator.randint(1, 4)):
            position = generator.randrange(len(data))
            data[position] = generator.randrange(256)
        try:
            request = pb.ModelInferRequest.FromString(bytes(data))
        except Exception:  # not a message at all: send the bytes as they are
            request = None
        if request is None:
            continue
        code, details = _call(stub, request)
        assert code in CLEAN, (bytes(data), code, details)
        seen.add(code)
    assert grpc.StatusCode.OK in seen and INVALID in seen
    assert _call(stub, _request()) == (grpc.StatusCode.OK, "")  # still serving


def test_api_key(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live  # public, as /v2/health/live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    wrong = "wrong API key: check the key"
    for metadata, message in (((), "missing API key: send 'Authorization: Bearer <key>'"),
                              ((("authorization", "Bearer wrong"),), wrong),
                              ((("authorization", KEY),), wrong)):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert caught.value.details().startswith(message)
    for scheme in ("Bearer", "bearer", "BEARER"):  # the scheme is case-insensitive
        answer = stub.ServerMetadata(pb.ServerMetadataRequest(),
                                     metadata=(("authorization", f"{scheme} {KEY}"),))
        assert answer.name == "convserve"


def _count(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                              for k, v in labels.items()))


def test_deadline_and_cancellation_count_as_499_and_skip_the_work(
        server: tuple[str, str], stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    url = server[0]
    images = _count(url, "convserve_inference_count_total", model="mnist-lenet5")
    gone = _count(url, "convserve_requests_total", route=INFER, status="499")
    with pytest.raises(grpc.RpcError) as caught:  # waits 300 ms for a batch: past its deadline
        stub.ModelInfer(_request(), metadata=AUTH, timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    future = stub.ModelInfer.future(_request(), metadata=AUTH)
    time.sleep(0.05)
    future.cancel()
    time.sleep(0.6)  # past the batching delay: a run would have happened by now
    assert _count(url, "convserve_requests_total", route=INFER, status="499") == gone + 2
    assert _count(url, "convserve_inference_count_total", model="mnist-lenet5") == images


def test_sigterm_finishes_accepted_calls(shipped_repository: Callable[..., Path]) -> None:
    grpc_port = free_port()
    with serve_models(shipped_repository("mnist-lenet5"), grpc_port=grpc_port,
                      CONVSERVE_MAX_QUEUE_DELAY_MS="500") as (process, _), \
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        results: list[object] = []
        calls = [threading.Thread(target=lambda: results.append(_call(stub, _request())))
                 for _ in range(3)]
        for call in calls:
            call.start()
        time.sleep(0.2)  # accepted, waiting in the batcher's 500 ms delay
        process.send_signal(signal.SIGTERM)
        for call in calls:
            call.join(30)
        assert results == [(grpc.StatusCode.OK, "")] * 3
        process.wait(30)


def test_typed_contents_answer_as_raw_bytes(stub: service_pb2_grpc.GRPCInferenceServiceStub
                                            ) -> None:
    pixels = np.random.default_rng(23).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    raw = stub.ModelInfer(_request((2, 28, 28, 1), raw=pixels.tobytes()), metadata=AUTH)
    typed = pb.ModelInferRequest(model_name="mnist-lenet5")
    tensor = typed.inputs.add(name="image", datatype="UINT8", shape=(2, 28, 28, 1))
    tensor.contents.uint_contents.extend(pixels.ravel().tolist())
    answer = stub.ModelInfer(typed, metadata=AUTH)
    assert answer.raw_output_contents == raw.raw_output_contents
    assert list(answer.outputs[0].shape) == [2, 10]
