"""What a classifier's first convolution learned: its filters, and what they make of a photo.

Read from the ONNX graph with the ``onnx`` package (no torch): the first ``Conv`` whose weights
are constants of the graph gives the filters; the graph cut after it (after its activation, when
one follows) gives the feature maps, run by its own small ONNX Runtime session, built on first
use and kept per graph file (a CPU session: it runs rarely, for a person looking).
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from PIL import Image

from service.errors import UnsupportedTask
from service.runtime import Session, memory_session
from service.settings import Settings

_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "HardSigmoid", "Elu",
                "Tanh")
MAX_MAPS = 16


@dataclass(frozen=True)
class FirstLayer:
    """The first convolution of a graph."""

    node: str  # its name in the graph
    weight: np.ndarray  # float32 [filters, channels, kh, kw], batch norm folded in by export
    stride: tuple[int, ...]
    output: str  # the tensor its feature maps are read from (after the activation, if any)
    activation: str | None
    session: Session  # the graph cut after ``output``
    input_name: str

    def feature_maps(self, array: np.ndarray) -> np.ndarray:
        """``[filters, h, w]`` feature maps of the model's uint8 ``[H, W, C]`` input."""
        return self.session.run({self.input_name: array[None]}, [self.output], alone=False)[0][0]


_LOCK = threading.Lock()
_CACHE: dict[tuple[str, int], FirstLayer] = {}
_CACHED = 16  # graphs kept (a reload stamps a replaced model anew)


def first_layer(path: Path, stamp: int, settings: Settings) -> FirstLayer:
    """The first convolution of the graph at ``path`` (``stamp``: its model.json's mtime, so a
    replaced model is read again). Blocking (reads the file the first time); thread-safe.

    Raises:
        UnsupportedTask: the graph has no convolution with constant weights (HTTP 422).
    """
    key = (str(path), stamp)
    with _LOCK:
        found = _CACHE.get(key)
        if found is None:
            found = _read(path, settings)
            if len(_CACHE) >= _CACHED:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = found
        return found


def _read(path: Path, settings: Settings) -> FirstLayer:
    model = onnx.load(str(path))
    graph = model.graph
    constants = {i.name: i for i in graph.initializer}
    conv = next((n for n in graph.node if n.op_type == "Conv" and n.input[1] in constants), None)
    if conv is None:
        raise UnsupportedTask(f"model {path.parent.parent.name!r}: the graph has no convolution "
                              "with constant weights to show")
    consumers = [n for n in graph.node if conv.output[0] in n.input]
    follows = consumers[0] if len(consumers) == 1 and consumers[0].op_type in _ACTIVATIONS else None
    output = follows.output[0] if follows else conv.output[0]
    input_name = graph.input[0].name
    cut = _cut(model, output)
    strides = next((list(a.ints) for a in conv.attribute if a.name == "strides"), [1, 1])
    return FirstLayer(node=conv.name, weight=numpy_helper.to_array(constants[conv.input[1]])
                      .astype(np.float32), stride=tuple(strides), output=output,
                      activation=follows.op_type if follows else None,
                      session=memory_session(cut.SerializeToString(), settings),
                      input_name=input_name)


def _cut(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """``model`` down to the nodes ``output`` needs, with ``output`` its one output."""
    producers = {out: node for node in model.graph.node for out in node.output}
    needed, wanted = set(), [output]
    while wanted:
        node = producers.get(wanted.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            wanted.extend(node.input)
    nodes = [n for n in model.graph.node if id(n) in needed]
    names = {name for n in nodes for name in n.input}
    graph = helper.make_graph(
        nodes, "first-layer", list(model.graph.input),
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        [i for i in model.graph.initializer if i.name in names])
    cut = helper.make_model(graph, opset_imports=list(model.opset_import))
    cut.ir_version = model.ir_version
    return cut


def filter_images(weight: np.ndarray) -> list[list[list[list[float]]]]:
    """Each filter as an image ``[kh][kw][channels]`` of [0, 1] values: zero weight is mid-grey,
    scaled by the filter's largest weight (sign kept: dark negative, bright positive)."""
    scale = np.abs(weight).reshape(len(weight), -1).max(axis=1)
    scaled = 0.5 + weight / (2 * np.maximum(scale, 1e-12))[:, None, None, None]
    return np.round(scaled.transpose(0, 2, 3, 1).astype(np.float64), 4).tolist()  # type: ignore[no-any-return]


def strongest(maps: np.ndarray, count: int) -> list[int]:
    """The ``count`` maps with the highest mean activation (ties: lower index first)."""
    means = maps.reshape(len(maps), -1).mean(axis=1)
    return np.argsort(-means, kind="stable")[:count].tolist()  # type: ignore[no-any-return]


def map_png(values: np.ndarray) -> str:
    """A feature map as a grey PNG data URL, min-max scaled (white: strongest)."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    out = io.BytesIO()
    Image.fromarray(np.round(scaled * 255).astype(np.uint8), "L").save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")
