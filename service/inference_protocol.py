"""The Open Inference Protocol (KServe v2, Triton), protocol-neutral: what HTTP and gRPC share.

Both adapters, ``service/http/routes/v2.py`` (JSON or binary bodies, :mod:`service.oip`) and
``service/grpc/servicer.py`` (protobuf messages), turn a request into the same two things: an
:class:`InferenceRequestBody` (pydantic, as KServe's ``v2_datamodels``: names, datatypes,
shapes, parameters, outputs asked for) and one :data:`Payload` per input (JSON numbers, typed
protobuf contents, or raw little-endian bytes). From there everything is here and framework-free:
:func:`read_request` checks them against the model with every limit and builds the input tensor,
:func:`answer_tensors` turns the model's rows into output tensors (the ``classification``
extension's ``"score:index:label"`` strings when asked), and :func:`metadata`, :func:`config`
describe a model. Errors are :class:`ProtocolError` (HTTP 400, gRPC INVALID_ARGUMENT) with a
message that says what to send instead.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from model_format import Capability
from service.errors import ServiceError
from service.pipeline import top_k

if TYPE_CHECKING:
    from service.model_version import ModelVersion

SERVER_NAME = "convserve"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["classification", "statistics"]  # over HTTP and gRPC alike
DATATYPES = {  # protocol name -> numpy dtype
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


class ProtocolError(ServiceError):
    """An inference request that does not follow the protocol or fit the model. HTTP 400."""

    status_code = 400
    code = "invalid_request"


@dataclass(frozen=True)
class TensorSpec:
    """The one input tensor a model takes: name, datatype and shape without the batch axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Raw:
    """One input's data as little-endian bytes, row-major."""

    data: bytes
    source: str  # where it came from, for messages: "the binary part", "raw_input_contents[0]"
    declared: int | None = None  # HTTP's parameters.binary_data_size, when given


# One input's data: raw bytes, numbers (a nested JSON list, or a flat sequence such as protobuf's
# typed contents, read only once the shape and batch size are checked), or nothing sent.
Payload = Raw | list[Any] | Sequence[Any] | np.ndarray | None


@dataclass
class RequestedOutput:
    """One output the client asked for."""

    name: str
    binary: bool
    classification: int = 0  # top-k as "score:index:label" strings; 0 = the raw tensor


@dataclass
class InferRequest:
    """A request read and checked against the model."""

    id: str | None
    tensor: np.ndarray  # [N, *spec.shape]
    outputs: list[RequestedOutput] = field(default_factory=list)


@dataclass
class OutputTensor:
    """One answer tensor: FP32 probabilities or BYTES classification strings."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray  # float32, or str objects for BYTES
    binary: bool  # HTTP: as binary data after the JSON (gRPC answers raw always)

    def raw(self) -> bytes:
        """The tensor as the protocol's raw bytes (BYTES: 4-byte little-endian length, then
        the bytes, per element)."""
        if self.datatype != "BYTES":
            return np.ascontiguousarray(self.values).tobytes()
        parts = []
        for value in self.values.ravel():
            data = str(value).encode()
            parts += [struct.pack("<I", len(data)), data]
        return b"".join(parts)


class Parameters(BaseModel):
    """The ``parameters`` of a request, an input or an output (others are allowed)."""

    model_config = ConfigDict(extra="allow")

    binary_data_size: Annotated[StrictInt, Field(ge=0)] | None = None  # bytes of binary data
    binary_data: StrictBool | None = None  # an output as binary data (or JSON)
    binary_data_output: StrictBool | None = None  # every output as binary data
    classification: Annotated[StrictInt, Field(ge=0)] | None = None  # top-k strings


class RequestInput(BaseModel):
    """One input tensor: ``data`` as (nested) JSON numbers, or binary data after the header."""

    name: StrictStr
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: StrictStr
    parameters: Parameters | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    """One output asked for."""

    name: StrictStr
    parameters: Parameters | None = None


class InferenceRequestBody(BaseModel):
    """An inference request (KServe's ``v2_datamodels.InferenceRequest``)."""

    id: StrictStr | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


def validation_message(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``where: what`` for the first three."""
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']}" if where else error["msg"])
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(problems) + more


def tensor_spec(version: ModelVersion) -> TensorSpec:
    """The model's input tensor, without the batch axis.

    Raises:
        UnsupportedTask: the model is not a classifier (no single input tensor).
    """
    version.require(Capability.CLASSIFY)
    assert version.input is not None
    spec = version.input
    return TensorSpec(version.input_name, "UINT8", (spec.height, spec.width, spec.channels))


def _numbers(entry: RequestInput, payload: Sequence[Any] | np.ndarray, dtype: np.dtype,
             count: int) -> np.ndarray:
    name, shape, datatype = entry.name, entry.shape, entry.datatype
    if not isinstance(payload, list | np.ndarray) and len(payload) != count:  # flat: no copy
        raise ProtocolError(f"input {name!r}: the contents hold {len(payload)} values, shape "
                            f"{shape} needs {count}")
    try:
        array = np.asarray(payload)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"input {name!r}: 'data' is not a regular array ({exc})") from None
    if array.size != count or not np.issubdtype(array.dtype, np.number):
        raise ProtocolError(f"input {name!r}: 'data' holds {array.size} values of type "
                            f"{array.dtype}, shape {shape} needs {count} numbers")
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(str(dtype))
        low, high = int(info.min), int(info.max)
        if (not np.issubdtype(array.dtype, np.integer) or array.min() < low
                or array.max() > high):
            raise ProtocolError(f"input {name!r}: {datatype} values are integers in "
                                f"[{low}, {high}]")
    return array.astype(dtype).reshape(shape)


def _tensor(entry: RequestInput, payload: Payload, spec: TensorSpec,
            max_images: int | None) -> np.ndarray:
    name, datatype, shape = entry.name, entry.datatype, entry.shape
    expected = f"[N, {', '.join(map(str, spec.shape))}]"
    if datatype != spec.datatype:
        raise ProtocolError(f"input {name!r} has datatype {datatype!r}; this model takes "
                            f"{spec.datatype}")
    if len(shape) != len(spec.shape) + 1 or tuple(shape[1:]) != spec.shape or shape[0] < 1:
        raise ProtocolError(f"input {name!r} has shape {shape}; this model takes {expected} "
                            "(batch first, N >= 1)")
    if max_images is not None and shape[0] > max_images:  # before any byte is read
        raise ProtocolError(f"batch of {shape[0]} images; at most {max_images} per request "
                            "(CONVSERVE_MAX_IMAGES_PER_REQUEST)")
    dtype = np.dtype(DATATYPES[spec.datatype])
    count = math.prod(shape)
    if isinstance(payload, Raw):
        size, needed = len(payload.data), count * dtype.itemsize
        if payload.declared is not None and (payload.declared != needed
                                             or payload.declared != size):
            raise ProtocolError(f"input {name!r}: binary_data_size is {payload.declared}, "
                                f"{payload.source} holds {size} bytes and shape {shape} needs "
                                f"{needed}")
        if size != needed:
            raise ProtocolError(f"input {name!r}: {payload.source} holds {size} bytes; shape "
                                f"{shape} of {datatype} needs {needed}")
        return np.frombuffer(payload.data, dtype=dtype).reshape(shape)
    if payload is None:
        raise ProtocolError(f"input {name!r} has no data: send it as numbers or as raw bytes "
                            "(HTTP: 'data' or parameters.binary_data_size; gRPC: contents or "
                            "raw_input_contents)")
    return _numbers(entry, payload, dtype, count)


def _outputs(header: InferenceRequestBody, output_name: str, binary_default: bool,
             num_classes: int) -> list[RequestedOutput]:
    if header.outputs is None:
        return [RequestedOutput(output_name, binary_default)]
    if len(header.outputs) > 1:  # each answered in full: N copies would be N times the answer
        names = [entry.name for entry in header.outputs]
        what = ("names the same output more than once" if len(set(names)) < len(names)
                else f"asks for {len(names)} outputs")
        raise ProtocolError(f"the request {what}; this model has one output, {output_name!r}: "
                            "ask for it once (or leave 'outputs' out)")
    outputs = []
    for entry in header.outputs:
        if entry.name != output_name:
            raise ProtocolError(f"unknown output {entry.name!r}; this model has one "
                                f"output, {output_name!r}")
        parameters = entry.parameters or Parameters()
        binary = binary_default if parameters.binary_data is None else parameters.binary_data
        outputs.append(RequestedOutput(output_name, binary,
                                       min(parameters.classification or 0, num_classes)))
    return outputs


def read_request(header: InferenceRequestBody, payloads: list[Payload], spec: TensorSpec,
                 output_name: str, num_classes: int,
                 max_images: int | None = None) -> InferRequest:
    """Check a request against a model with one input ``spec`` and one output; build the tensor.

    ``payloads`` holds each input's data, in the order of ``header.inputs``. The outputs, then
    the batch size (at most ``max_images``) are checked before any data is read.

    Raises:
        ProtocolError: anything that does not fit the model or the limits (HTTP 400).
    """
    if len(header.inputs) != 1:
        raise ProtocolError(f"send exactly one input, {spec.name!r} ({spec.datatype}, shape "
                            f"[N, {', '.join(map(str, spec.shape))}])")
    entry = header.inputs[0]
    if entry.name != spec.name:
        raise ProtocolError(f"unknown input {entry.name!r}; this model's input is "
                            f"{spec.name!r}")
    binary_default = bool(header.parameters and header.parameters.binary_data_output)
    outputs = _outputs(header, output_name, binary_default, num_classes)
    tensor = _tensor(entry, payloads[0], spec, max_images)
    return InferRequest(id=header.id, tensor=tensor, outputs=outputs)


def classification_strings(rows: np.ndarray, labels: list[str], k: int) -> np.ndarray:
    """Triton's classification extension: ``[N, k]`` strings ``"score:index[:label]"``."""
    return np.array([[f"{p.score:f}:{p.index}" + (f":{p.label}" if p.index < len(labels) else "")
                      for p in top_k(row, labels, k)] for row in rows], dtype=object)


def answer_tensors(request: InferRequest, rows: np.ndarray,
                   labels: list[str]) -> list[OutputTensor]:
    """The outputs the request asked for, from the model's ``[N, classes]`` rows."""
    answer = []
    for wanted in request.outputs:
        if wanted.classification:
            values = classification_strings(rows, labels, wanted.classification)
            datatype = "BYTES"
        else:
            values, datatype = np.ascontiguousarray(rows, dtype=np.float32), "FP32"
        answer.append(OutputTensor(wanted.name, datatype, list(values.shape), values,
                                   wanted.binary))
    return answer


def metadata(version: ModelVersion, versions: list[ModelVersion]) -> dict[str, Any]:
    """The protocol's model metadata for ``version`` (listing ``versions``)."""
    answer: dict[str, Any] = {"name": version.name,
                              "versions": [str(v.version) for v in versions],
                              "platform": PLATFORM, "parameters": {"task": version.task}}
    if version.input is None:  # a multi-graph detector: no single input tensor to describe
        answer.update(inputs=[], outputs=[])
        return answer
    spec = version.input
    answer["inputs"] = [{"name": version.input_name, "datatype": "UINT8",
                         "shape": [-1, spec.height, spec.width, spec.channels]}]
    answer["outputs"] = [{"name": version.output_name, "datatype": "FP32",
                          "shape": [-1, len(version.labels) or -1]}]
    return answer


def config(version: ModelVersion, max_queue_delay_ms: float) -> dict[str, Any]:
    """A Triton-style model configuration, for tools that ask for one (e.g. perf_analyzer);
    ``max_batch_size`` is the version's own cap, as ``/v1/models`` reports it."""
    spec = tensor_spec(version)
    return {"name": version.name, "platform": PLATFORM, "backend": "onnxruntime",
            "max_batch_size": version.max_batch or 0,
            "input": [{"name": spec.name, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC",
                       "dims": list(spec.shape)}],
            "output": [{"name": version.output_name, "data_type": "TYPE_FP32",
                        "dims": [len(version.labels)]}],
            "dynamic_batching": {"max_queue_delay_microseconds":
                                 int(max_queue_delay_ms * 1000)}}
