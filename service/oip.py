"""The Open Inference Protocol's HTTP wire format (KServe v2 / Triton HTTP): bodies in and out.

:func:`parse_infer_request` reads a JSON or binary (``binary_tensor_data`` extension,
``Inference-Header-Content-Length``) inference request: the JSON is validated against
:class:`~service.inference_protocol.InferenceRequestBody` before anything is read from it, then
:func:`service.inference_protocol.read_request`, which gRPC shares, checks it against the model.
:func:`encode_infer_response` writes the answer, with the outputs as JSON ``data`` or as binary
data after the JSON header. ``service/http/routes/v2.py`` serves them. Errors are
:class:`~service.inference_protocol.ProtocolError` (HTTP 400).
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import ValidationError

from service.inference_protocol import (
    InferenceRequestBody,
    InferRequest,
    OutputTensor,
    Payload,
    ProtocolError,
    Raw,
    TensorSpec,
    read_request,
    validation_message,
)

__all__ = ["HEADER_LENGTH", "ProtocolError", "TensorSpec", "encode_infer_response",
           "parse_infer_request"]

HEADER_LENGTH = "Inference-Header-Content-Length"
# The JSON of a request holding at most ``max_images`` images is at most this many bytes per
# value (an integer of 3 digits, a comma, generous room for indentation), plus the rest: a
# larger JSON part is refused before it is parsed (a 31 MB body of zeros once became a 750 MB
# tensor before its batch size was checked).
JSON_BYTES_PER_VALUE = 64
JSON_BYTES_EXTRA = 64 * 1024


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
                            f"{validation_message(exc)}") from None
    return header, body[size:]


def parse_infer_request(body: bytes, header_length: str | None, spec: TensorSpec,
                        output_name: str, num_classes: int,
                        max_images: int | None = None) -> InferRequest:
    """Read an HTTP inference request for a model with one input ``spec`` and one output.

    A JSON part larger than ``max_images`` images of numbers can be is refused before it is
    parsed. Blocking (a large JSON body takes a while): the route runs big ones off the event
    loop.

    Raises:
        ProtocolError: anything malformed, or a tensor that does not fit the model (HTTP 400).
    """
    max_json = (None if max_images is None else
                JSON_BYTES_EXTRA + max_images * math.prod(spec.shape) * JSON_BYTES_PER_VALUE)
    header, binary = _json_header(body, header_length, max_json)
    payloads: list[Payload] = []
    for entry in header.inputs:
        size = entry.parameters.binary_data_size if entry.parameters is not None else None
        payloads.append(entry.data if size is None else Raw(binary, "the binary part", size))
    if binary and not any(isinstance(p, Raw) for p in payloads):
        raise ProtocolError(f"{len(binary)} bytes follow the JSON header but no input has "
                            "parameters.binary_data_size")
    return read_request(header, payloads, spec, output_name, num_classes, max_images)


def encode_infer_response(model: str, version: int, request_id: str | None,
                          outputs: list[OutputTensor]) -> tuple[bytes, int | None]:
    """The response body and, when outputs are binary, the length of its JSON part.

    ``outputs``: the answer tensors (:func:`service.inference_protocol.answer_tensors`).
    """
    entries, blobs = [], []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": tensor.shape}
        if tensor.binary:
            raw = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = tensor.values.ravel().tolist()
        entries.append(entry)
    answer: dict[str, Any] = {"model_name": model, "model_version": str(version),
                              "outputs": entries}
    if request_id is not None:
        answer["id"] = request_id
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
