"""The Open Inference Protocol (KServe v2 / Triton HTTP) wire format: requests in, responses out.

Pure functions, no HTTP: :func:`parse_infer_request` reads a JSON or binary (``binary_tensor_data``
extension, ``Inference-Header-Content-Length``) inference request into one numpy input tensor and
the outputs asked for; :func:`encode_infer_response` writes the answer, with the outputs as JSON
``data`` or as binary data after the JSON header, and with the ``classification`` extension's
``"score:index:label"`` BYTES strings when asked. ``service/routes/v2.py`` serves them.

Errors are :class:`ProtocolError` (HTTP 400), with a message that says what to send instead.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import ServiceError
from service.pipeline import top_k

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification"]
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


@dataclass
class RequestedOutput:
    """One output the client asked for."""

    name: str
    binary: bool
    classification: int = 0  # top-k as "score:index:label" strings; 0 = the raw tensor


@dataclass
class InferRequest:
    """A parsed inference request."""

    id: str | None
    tensor: np.ndarray  # [N, *spec.shape]
    outputs: list[RequestedOutput] = field(default_factory=list)


def _json_header(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, not "
                                f"{header_length!r}") from None
        if not 0 < size <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {size} but the body holds {len(body)} "
                                "bytes; it must be the length of the JSON part")
    try:
        header = json.loads(body[:size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"the inference request is not valid JSON ({exc}); binary tensor "
                            f"data needs the {HEADER_LENGTH} header") from None
    if not isinstance(header, dict):
        raise ProtocolError("the inference request must be a JSON object with 'inputs'")
    return header, body[size:]


def _flag(parameters: Any, name: str, default: bool = False) -> bool:
    value = parameters.get(name, default) if isinstance(parameters, dict) else default
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter {name!r} must be true or false, not {value!r}")
    return value


def _tensor(entry: dict[str, Any], spec: TensorSpec, binary: bytes) -> np.ndarray:
    name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
    expected = f"[N, {', '.join(map(str, spec.shape))}]"
    if datatype != spec.datatype:
        raise ProtocolError(f"input {name!r} has datatype {datatype!r}; this model takes "
                            f"{spec.datatype}")
    if (not isinstance(shape, list) or not all(isinstance(d, int) for d in shape)
            or len(shape) != len(spec.shape) + 1 or tuple(shape[1:]) != spec.shape
            or shape[0] < 1):
        raise ProtocolError(f"input {name!r} has shape {shape}; this model takes {expected} "
                            "(batch first, N >= 1)")
    dtype = np.dtype(DATATYPES[spec.datatype])
    count = math.prod(shape)
    parameters = entry.get("parameters") or {}
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if size != count * dtype.itemsize or size != len(binary):
            raise ProtocolError(f"input {name!r}: binary_data_size is {size}, the binary part "
                                f"holds {len(binary)} bytes and shape {shape} needs "
                                f"{count * dtype.itemsize}")
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    if "data" not in entry:
        raise ProtocolError(f"input {name!r} has neither 'data' nor "
                            "parameters.binary_data_size")
    try:
        array = np.asarray(entry["data"])
    except ValueError as exc:
        raise ProtocolError(f"input {name!r}: 'data' is not a regular array ({exc})") from None
    if array.size != count or not np.issubdtype(array.dtype, np.number):
        raise ProtocolError(f"input {name!r}: 'data' holds {array.size} values of type "
                            f"{array.dtype}, shape {shape} needs {count} numbers")
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(str(dtype))
        low, high = int(info.min), int(info.max)
        if (not np.issubdtype(array.dtype, np.integer) or array.min() < low
                or array.max() > high):
            raise ProtocolError(f"input {name!r}: {spec.datatype} values are integers in "
                                f"[{low}, {high}]")
    return array.astype(dtype).reshape(shape)


def _outputs(header: dict[str, Any], output_name: str, binary_default: bool,
             num_classes: int) -> list[RequestedOutput]:
    asked = header.get("outputs")
    if asked is None:
        return [RequestedOutput(output_name, binary_default)]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'")
    outputs = []
    for entry in asked:
        if entry.get("name") != output_name:
            raise ProtocolError(f"unknown output {entry.get('name')!r}; this model has one "
                                f"output, {output_name!r}")
        parameters = entry.get("parameters") or {}
        k = parameters.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ProtocolError(f"parameters.classification must be an integer >= 1 (the "
                                f"number of classes to return), not {k!r}")
        outputs.append(RequestedOutput(output_name, _flag(parameters, "binary_data",
                                                          binary_default),
                                       min(k, num_classes)))
    return outputs


def parse_infer_request(body: bytes, header_length: str | None, spec: TensorSpec,
                        output_name: str, num_classes: int) -> InferRequest:
    """Read an inference request for a model with one input ``spec`` and one output.

    Raises:
        ProtocolError: anything malformed, or a tensor that does not fit the model (HTTP 400).
    """
    header, binary = _json_header(body, header_length)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"send exactly one input, {spec.name!r} ({spec.datatype}, shape "
                            f"[N, {', '.join(map(str, spec.shape))}])")
    entry = inputs[0]
    if entry.get("name") != spec.name:
        raise ProtocolError(f"unknown input {entry.get('name')!r}; this model's input is "
                            f"{spec.name!r}")
    if binary and "binary_data_size" not in (entry.get("parameters") or {}):
        raise ProtocolError(f"{len(binary)} bytes follow the JSON header but no input has "
                            "parameters.binary_data_size")
    tensor = _tensor(entry, spec, binary)
    request_id = header.get("id")
    binary_default = _flag(header.get("parameters"), "binary_data_output")
    return InferRequest(id=str(request_id) if request_id is not None else None, tensor=tensor,
                        outputs=_outputs(header, output_name, binary_default, num_classes))


def classification_strings(rows: np.ndarray, labels: list[str], k: int) -> np.ndarray:
    """Triton's classification extension: ``[N, k]`` strings ``"score:index[:label]"``."""
    return np.array([[f"{p.score:f}:{p.index}" + (f":{p.label}" if p.index < len(labels) else "")
                      for p in top_k(row, labels, k)] for row in rows], dtype=object)


def _bytes_tensor(strings: np.ndarray) -> bytes:
    """BYTES in binary form: each element is a 4-byte little-endian length, then the bytes."""
    parts = []
    for value in strings.ravel():
        data = str(value).encode()
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def encode_infer_response(model: str, version: int, request: InferRequest, rows: np.ndarray,
                          labels: list[str]) -> tuple[bytes, int | None]:
    """The response body and, when outputs are binary, the length of its JSON part."""
    outputs, blobs = [], []
    for wanted in request.outputs:
        if wanted.classification:
            values = classification_strings(rows, labels, wanted.classification)
            datatype, raw = "BYTES", _bytes_tensor(values) if wanted.binary else b""
            data: list[Any] = values.ravel().tolist()
        else:
            values = np.ascontiguousarray(rows, dtype=np.float32)
            datatype, raw = "FP32", values.tobytes() if wanted.binary else b""
            data = values.ravel().tolist()
        output: dict[str, Any] = {"name": wanted.name, "datatype": datatype,
                                  "shape": list(values.shape)}
        if wanted.binary:
            output["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            output["data"] = data
        outputs.append(output)
    answer: dict[str, Any] = {"model_name": model, "model_version": str(version),
                              "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
