"""Protobuf messages to and from the protocol-neutral types of :mod:`service.inference_protocol`.

:func:`read_infer_request` turns a ``ModelInferRequest`` into the same
:class:`~service.inference_protocol.InferenceRequestBody` and payloads HTTP builds from its
JSON, and reads it with the same :func:`~service.inference_protocol.read_request`;
:func:`infer_response` writes the answer tensors as ``raw_output_contents`` (as Triton does).
Dictionaries the HTTP side answers as JSON (metadata, configuration, statistics) become
messages with :func:`from_dict`, so both protocols answer from one definition.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import ValidationError

from service.grpc import inference_pb2 as pb
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

M = TypeVar("M", bound=Message)
# Where each datatype's elements go in InferTensorContents (FP16 and BF16: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _parameters(parameters: Any) -> dict[str, Any] | None:
    """A ``map<string, InferParameter>`` as a plain dict (None when empty)."""
    if not parameters:
        return None
    values = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        values[key] = getattr(value, choice) if choice else None
    return values


def _payload(index: int, tensor: Any, raw: list[bytes]) -> Payload:
    filled = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
    if raw:
        if filled:
            raise ProtocolError(f"input {tensor.name!r} has both contents and "
                                "raw_input_contents; send its data in one of them")
        return Raw(raw[index], f"raw_input_contents[{index}]")
    if not filled:
        return None
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        return None  # read_request names the datatype the model takes
    if filled != [field]:
        raise ProtocolError(f"input {tensor.name!r}: {tensor.datatype} elements go in "
                            f"contents.{field}, not {', '.join(filled)}")
    return getattr(tensor.contents, field)  # read once the shape is checked


def read_infer_request(request: pb.ModelInferRequest, spec: TensorSpec, output_name: str,
                       num_classes: int, max_images: int) -> InferRequest:
    """Read a ``ModelInferRequest`` for a model with one input ``spec`` and one output.

    Raises:
        ProtocolError: as over HTTP, with the same messages (gRPC INVALID_ARGUMENT).
    """
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"raw_input_contents holds {len(raw)} entries for "
                            f"{len(request.inputs)} inputs; send one per input, in order")
    body = {
        "id": request.id or None,
        "parameters": _parameters(request.parameters),
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                    "parameters": _parameters(t.parameters)} for t in request.inputs],
        "outputs": [{"name": o.name, "parameters": _parameters(o.parameters)}
                    for o in request.outputs] or None,
    }
    try:
        header = InferenceRequestBody.model_validate(body)
    except ValidationError as exc:
        raise ProtocolError("the inference request does not follow the protocol: "
                            f"{validation_message(exc)}") from None
    payloads = [_payload(i, tensor, raw) for i, tensor in enumerate(request.inputs)]
    return read_request(header, payloads, spec, output_name, num_classes, max_images)


def infer_response(model: str, version: int, request: InferRequest,
                   outputs: list[OutputTensor]) -> pb.ModelInferResponse:
    """The answer, each output's data in ``raw_output_contents``."""
    response = pb.ModelInferResponse(model_name=model, model_version=str(version),
                                     id=request.id or "")
    for tensor in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor.raw())
    return response


def from_dict(values: dict[str, Any], message: M) -> M:
    """``values`` (the HTTP side's JSON answer) as ``message``; fields the proto lacks (e.g.
    metadata's ``parameters``) are dropped."""
    return json_format.ParseDict(values, message, ignore_unknown_fields=True)
