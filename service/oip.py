"""The Open Inference Protocol (KServe v2 / Triton HTTP) wire format: requests in, responses out.

Pure functions, no HTTP: :func:`parse_infer_request` reads a JSON or binary (``binary_tensor_data``
extension, ``Inference-Header-Content-Length``) inference request into one numpy input tensor and
the outputs asked for; :func:`encode_infer_response` writes the answer, with the outputs as JSON
``data`` or as binary data after the JSON header, and with the ``classification`` extension's
``"score:index:label"`` BYTES strings when asked. ``service/http/routes/v2.py`` serves them.

Requests are validated against :class:`InferenceRequestBody` (pydantic, as KServe's
``v2_datamodels``) before anything is read from them. Errors are :class:`ProtocolError`
(HTTP 400), with a message that says what to send instead.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Annotated, Any

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

from service.errors import ServiceError
from service.pipeline import top_k

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification"]
DATATYPES = {  # protocol name -> numpy dtype
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


# The JSON of a request holding at most ``max_images`` images is at most this many bytes per
# value (an integer of 3 digits, a comma, generous room for indentation), plus the rest: a
# larger JSON part is refused before it is parsed (a 31 MB body of zeros once became a 750 MB
# tensor before its batch size was checked).
JSON_BYTES_PER_VALUE = 64
JSON_BYTES_EXTRA = 64 * 1024


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


class Parameters(BaseModel):
    """The ``parameters`` object of a request, an input or an output (others are allowed)."""

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
    """The JSON of an inference request (KServe's ``v2_datamodels.InferenceRequest``)."""

    id: StrictStr | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']}" if where else error["msg"])
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(problems) + more


def _json_header(body: bytes, header_length: str | None,
                 max_json: int | None = None) -> tuple[InferenceRequestBody, bytes]:
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
    if max_json is not None and size > max_json:
        raise ProtocolError(f"the JSON part is {size} bytes, more than the {max_json} that the "
                            "largest batch this model takes needs "
                            "(CONVSERVE_MAX_IMAGES_PER_REQUEST); send fewer images, or the "
                            "tensor as binary data (binary_data_size)")
    try:  # pydantic's JSON parser: no recursion on deep nesting, a typed result
        header = InferenceRequestBody.model_validate_json(body[:size])
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            reason = exc.errors()[0]["msg"]
            raise ProtocolError(f"the inference request is not valid JSON ({reason}); binary "
                                f"tensor data needs the {HEADER_LENGTH} header") from None
        raise ProtocolError("the inference request does not follow the protocol: "
                            f"{_validation_message(exc)}") from None
    return header, body[size:]


def _tensor(entry: RequestInput, spec: TensorSpec, binary: bytes,
            max_images: int | None = None) -> np.ndarray:
    name, datatype, shape = entry.name, entry.datatype, entry.shape
    expected = f"[N, {', '.join(map(str, spec.shape))}]"
    if datatype != spec.datatype:
        raise ProtocolError(f"input {name!r} has datatype {datatype!r}; this model takes "
                            f"{spec.datatype}")
    if len(shape) != len(spec.shape) + 1 or tuple(shape[1:]) != spec.shape or shape[0] < 1:
        raise ProtocolError(f"input {name!r} has shape {shape}; this model takes {expected} "
                            "(batch first, N >= 1)")
    if max_images is not None and shape[0] > max_images:  # before any tensor is built
        raise ProtocolError(f"batch of {shape[0]} images; at most {max_images} per request "
                            "(CONVSERVE_MAX_IMAGES_PER_REQUEST)")
    dtype = np.dtype(DATATYPES[spec.datatype])
    count = math.prod(shape)
    size = entry.parameters.binary_data_size if entry.parameters is not None else None
    if size is not None:
        if size != count * dtype.itemsize or size != len(binary):
            raise ProtocolError(f"input {name!r}: binary_data_size is {size}, the binary part "
                                f"holds {len(binary)} bytes and shape {shape} needs "
                                f"{count * dtype.itemsize}")
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    if entry.data is None:
        raise ProtocolError(f"input {name!r} has neither 'data' nor "
                            "parameters.binary_data_size")
    try:
        array = np.asarray(entry.data)
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
            raise ProtocolError(f"input {name!r}: {spec.datatype} values are integers in "
                                f"[{low}, {high}]")
    return array.astype(dtype).reshape(shape)


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


def parse_infer_request(body: bytes, header_length: str | None, spec: TensorSpec,
                        output_name: str, num_classes: int,
                        max_images: int | None = None) -> InferRequest:
    """Read an inference request for a model with one input ``spec`` and one output.

    The JSON is validated against :class:`InferenceRequestBody` before anything is read from it;
    the outputs, then the batch size (at most ``max_images``) are checked before the tensor is
    built.
    Blocking (a large JSON body takes a while): the route runs big ones off the event loop.

    Raises:
        ProtocolError: anything malformed, or a tensor that does not fit the model (HTTP 400).
    """
    max_json = (None if max_images is None else
                JSON_BYTES_EXTRA + max_images * math.prod(spec.shape) * JSON_BYTES_PER_VALUE)
    header, binary = _json_header(body, header_length, max_json)
    if len(header.inputs) != 1:
        raise ProtocolError(f"send exactly one input, {spec.name!r} ({spec.datatype}, shape "
                            f"[N, {', '.join(map(str, spec.shape))}])")
    entry = header.inputs[0]
    if entry.name != spec.name:
        raise ProtocolError(f"unknown input {entry.name!r}; this model's input is "
                            f"{spec.name!r}")
    if binary and (entry.parameters is None or entry.parameters.binary_data_size is None):
        raise ProtocolError(f"{len(binary)} bytes follow the JSON header but no input has "
                            "parameters.binary_data_size")
    binary_default = bool(header.parameters and header.parameters.binary_data_output)
    outputs = _outputs(header, output_name, binary_default, num_classes)
    tensor = _tensor(entry, spec, binary, max_images)
    return InferRequest(id=header.id, tensor=tensor, outputs=outputs)


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
