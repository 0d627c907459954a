"""service/oip.py: the Open Inference Protocol's request parser, directly, on good and bad bytes.

The malformed bodies include issue 13's reproducers, byte for byte: each one is a
:class:`ProtocolError` (HTTP 400) with a message that names the problem, never another
exception.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.inference_protocol import ProtocolError, TensorSpec, answer_tensors
from service.oip import encode_infer_response, parse_infer_request

SPEC = TensorSpec("image", "UINT8", (28, 28, 1))
PIXELS = list(range(256)) * 3 + [0] * 16  # 784 values in [0, 255]


def _request(**changes: object) -> dict:
    entry = {"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8", "data": PIXELS}
    body: dict = {"inputs": [entry]}
    for key, value in changes.items():
        if key.startswith("input_"):
            entry[key.removeprefix("input_")] = value
        else:
            body[key] = value
    return body


def _parse(body: bytes | dict, header_length: str | None = None):
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    return parse_infer_request(raw, header_length, SPEC, "probabilities", 10)


def test_json_data_becomes_the_tensor() -> None:
    parsed = _parse(_request(id="r1"))
    assert parsed.id == "r1"
    assert parsed.tensor.dtype == np.uint8 and parsed.tensor.shape == (1, 28, 28, 1)
    np.testing.assert_array_equal(parsed.tensor.ravel(), PIXELS)
    assert [(o.name, o.binary, o.classification) for o in parsed.outputs] == [
        ("probabilities", False, 0)]


def test_nested_data_is_read_row_major() -> None:
    nested = np.array(PIXELS).reshape(1, 28, 28, 1).tolist()
    np.testing.assert_array_equal(_parse(_request(input_data=nested)).tensor.ravel(), PIXELS)


def test_binary_data_after_the_json_header() -> None:
    header = json.dumps(_request(input_data=None, input_parameters={"binary_data_size": 784},
                                 parameters={"binary_data_output": True})).encode()
    pixels = bytes(np.array(PIXELS, np.uint8))
    parsed = parse_infer_request(header + pixels, str(len(header)), SPEC, "probabilities", 10)
    np.testing.assert_array_equal(parsed.tensor.ravel(), PIXELS)
    assert parsed.outputs[0].binary


def test_outputs_binary_and_classification() -> None:
    parsed = _parse(_request(outputs=[{"name": "probabilities",
                                       "parameters": {"classification": 30,
                                                      "binary_data": True}}]))
    assert [(o.binary, o.classification) for o in parsed.outputs] == [(True, 10)]  # capped
    rows = np.eye(10, dtype=np.float32)[:1]
    outputs = answer_tensors(parsed, rows, [str(i) for i in range(10)])
    content, length = encode_infer_response("m", 1, parsed.id, outputs)
    assert length is not None
    answer = json.loads(content[:length])
    assert answer["outputs"][0]["datatype"] == "BYTES"
    assert answer["outputs"][0]["parameters"]["binary_data_size"] == len(content) - length


@pytest.mark.parametrize(("body", "message"), [
    # issue 13's reproducers
    (_request(input_parameters=5), "inputs.0.parameters: Input should be an object"),
    (_request(input_parameters="binary_data_size"),
     "inputs.0.parameters: Input should be an object"),
    (b"[" * 100_000, "is not valid JSON (Invalid JSON: recursion limit exceeded"),
    (b'{"a":' * 100_000, "is not valid JSON (Invalid JSON: recursion limit exceeded"),
    (_request(outputs=[{"name": "probabilities", "parameters": 7}]),
     "outputs.0.parameters: Input should be an object"),
    (_request(outputs=[1]), "outputs.0: Input should be an object"),
    (_request(input_shape=[True, 28, 28, 1]), "inputs.0.shape.0: Input should be a valid integer"),
    # more of the same kind
    (b"", "is not valid JSON"),
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe", "is not valid JSON"),
    (b"[]", "Input should be an object"),
    (b"{}", "inputs: Field required"),
    (_request(inputs=[]), "send exactly one input, 'image' (UINT8, shape [N, 28, 28, 1])"),
    (_request(inputs="image"), "inputs: Input should be a valid array"),
    (_request(input_name=7), "inputs.0.name: Input should be a valid string"),
    (_request(input_name="pixels"), "unknown input 'pixels'; this model's input is 'image'"),
    (_request(input_datatype="FP32"), "has datatype 'FP32'; this model takes UINT8"),
    (_request(input_shape=[1, 28, 28]), "has shape [1, 28, 28]; this model takes [N, 28, 28, 1]"),
    (_request(input_shape=[0, 28, 28, 1]), "(batch first, N >= 1)"),
    (_request(input_shape=[-1, 28, 28, 1]), "inputs.0.shape.0: Input should be greater than"),
    (_request(input_shape=[1.5, 28, 28, 1]), "inputs.0.shape.0: Input should be a valid integer"),
    (_request(input_shape="1,28,28,1"), "inputs.0.shape: Input should be a valid array"),
    (_request(input_data=5), "inputs.0.data: Input should be a valid array"),
    (_request(input_data=None), "has no data: send it as numbers or as raw bytes"),
    (_request(input_data=PIXELS[:-1]), "holds 783 values of type int64, shape [1, 28, 28, 1] "
                                       "needs 784 numbers"),
    (_request(input_data=[[1, 2], [3]]), "'data' is not a regular array"),
    (_request(input_data=["a"] * 784), "needs 784 numbers"),
    (_request(input_data=[True] * 784), "needs 784 numbers"),
    (_request(input_data=[0.5] * 784), "UINT8 values are integers in [0, 255]"),
    (_request(input_data=[256] * 784), "UINT8 values are integers in [0, 255]"),
    (_request(input_data=[10**30] * 784), "holds 784 values of type object"),
    (_request(input_parameters={"binary_data_size": True}),
     "inputs.0.parameters.binary_data_size: Input should be a valid integer"),
    (_request(input_parameters={"binary_data_size": 784}),
     "binary_data_size is 784, the binary part holds 0 bytes"),
    (_request(outputs={"name": "probabilities"}), "outputs: Input should be a valid array"),
    (_request(outputs=[{"name": "logits"}]), "unknown output 'logits'"),
    (_request(outputs=[{"name": "probabilities", "parameters": {"classification": -1}}]),
     "outputs.0.parameters.classification: Input should be greater than or equal to 0"),
    (_request(outputs=[{"name": "probabilities", "parameters": {"binary_data": "yes"}}]),
     "outputs.0.parameters.binary_data: Input should be a valid boolean"),
    (_request(parameters=[]), "parameters: Input should be an object"),
    (_request(id=5), "id: Input should be a valid string"),
])
def test_malformed_requests_are_protocol_errors(body: bytes | dict, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        _parse(body)
    assert caught.value.status_code == 400
    assert message in caught.value.message, caught.value.message


@pytest.mark.parametrize(("length", "message"), [
    ("x", "Inference-Header-Content-Length must be an integer, not 'x'"),
    ("0", "Inference-Header-Content-Length is 0 but the body holds"),
    ("100000", "Inference-Header-Content-Length is 100000 but the body holds"),
])
def test_bad_header_length(length: str, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        _parse(_request(), length)
    assert message in caught.value.message


def test_binary_bytes_without_binary_data_size() -> None:
    header = json.dumps(_request()).encode()
    with pytest.raises(ProtocolError) as caught:
        parse_infer_request(header + b"\x00" * 784, str(len(header)), SPEC, "probabilities", 10)
    assert "784 bytes follow the JSON header but no input has parameters.binary_data_size" in (
        caught.value.message)
