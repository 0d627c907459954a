"""Traces: a live service exports its spans over OTLP/HTTP to a real receiver in this test.

The receiver is a small HTTP server taking ``POST /v1/traces`` (protobuf
``ExportTraceServiceRequest``, opentelemetry-proto's own messages). Requests over HTTP ``/v2``,
``/v1`` and gRPC carry a W3C ``traceparent``; their spans must arrive in the caller's trace,
with the caller's span as parent, and the steps as children with their attributes.
"""

from __future__ import annotations

import http.server
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from conftest import free_port, serve_models

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the otel extra (opentelemetry-sdk, its OTLP exporter) is not installed")
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service.ExportTraceServiceRequest.FromString(body)
                with outer.lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            outer.spans.extend(scope.spans)
                answer = trace_service.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def trace(self, trace_id: str, count: int, timeout: float = 30) -> list[Any]:
        """The spans of ``trace_id``, once at least ``count`` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{len(found)} of {count} spans of {trace_id} arrived: "
                             f"{[s.name for s in found]}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def service(receiver: Receiver,
            shipped_repository: Callable[..., Path]) -> Iterator[tuple[str, str]]:
    grpc_port = free_port()
    with serve_models(shipped_repository("mnist-lenet5"), grpc_port=grpc_port,
                      OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_port}",
                      OTEL_SERVICE_NAME="convserve-test", OTEL_BSP_SCHEDULE_DELAY="100",
                      ) as (_, url):
        yield url, f"127.0.0.1:{grpc_port}"


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def _attributes(span: Any) -> dict[str, Any]:
    values = {}
    for item in span.attributes:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind) if kind else None
    return values


def _check(spans: list[Any], parent: str, root_name: str) -> dict[str, Any]:
    """The request span is the caller's child; every step is the request span's child."""
    (root,) = [s for s in spans if s.parent_span_id.hex() == parent]
    assert root.name == root_name
    steps = {s.name: s for s in spans if s is not root}
    assert all(s.parent_span_id == root.span_id for s in steps.values())
    assert {"read", "queue", "inference", "encode"} <= set(steps)
    assert _attributes(steps["inference"])["batch_size"] >= 1
    queue, run = steps["queue"], steps["inference"]
    assert root.start_time_unix_nano <= queue.start_time_unix_nano <= queue.end_time_unix_nano
    assert queue.end_time_unix_nano == run.start_time_unix_nano <= run.end_time_unix_nano
    assert run.end_time_unix_nano <= root.end_time_unix_nano
    return _attributes(root)


def test_http_v2_request_is_one_trace_with_its_steps(service: tuple[str, str],
                                                     receiver: Receiver) -> None:
    trace_id, parent, header = _traceparent()
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 28, 28, 1],
                        "data": [0] * (2 * 784)}]}
    answer = httpx.post(f"{service[0]}/v2/models/mnist-lenet5/infer", json=body,
                        headers={"traceparent": header})
    assert answer.status_code == 200
    root = _check(receiver.trace(trace_id, 5), parent, "POST /v2/models/{name}/infer")
    assert root["http.response.status_code"] == 200 and root["http.route"] == \
        "/v2/models/{name}/infer"
    assert (root["model"], root["version"], root["images"]) == ("mnist-lenet5", 1, 2)


def test_grpc_request_is_one_trace_with_its_steps(service: tuple[str, str],
                                                  receiver: Receiver) -> None:
    trace_id, parent, header = _traceparent()
    with tgrpc.InferenceServerClient(service[1]) as client:
        tensor = tgrpc.InferInput("image", [1, 28, 28, 1], "UINT8")
        tensor.set_data_from_numpy(np.zeros((1, 28, 28, 1), np.uint8))
        client.infer("mnist-lenet5", [tensor], headers={"traceparent": header})
    root = _check(receiver.trace(trace_id, 5), parent,
                  "/inference.GRPCInferenceService/ModelInfer")
    assert root["rpc.system"] == "grpc" and root["model"] == "mnist-lenet5"


def test_v1_classify_and_errors_are_traced(service: tuple[str, str],
                                           receiver: Receiver) -> None:
    trace_id, parent, header = _traceparent()
    answer = httpx.post(f"{service[0]}/v1/models/mnist-lenet5/classify",
                        files={"file": ("digit.png", (SAMPLES / "digit.png").read_bytes())},
                        headers={"traceparent": header})
    assert answer.status_code == 200
    spans = receiver.trace(trace_id, 4)
    (root,) = [s for s in spans if s.parent_span_id.hex() == parent]
    steps = {s.name: s for s in spans if s.parent_span_id == root.span_id}
    assert {"decode", "queue", "inference"} <= set(steps)
    assert _attributes(steps["decode"])["images"] == 1
    trace_id, parent, header = _traceparent()
    missing = httpx.post(f"{service[0]}/v2/models/nope/infer", json={"inputs": []},
                         headers={"traceparent": header})
    assert missing.status_code == 404
    (root,) = receiver.trace(trace_id, 1)
    assert _attributes(root)["http.response.status_code"] == 404
