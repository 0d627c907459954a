"""What a classifier's first convolution learned: its filters, and what they make of a photo.

Read from the graph the service loaded (the bytes ``load_version`` read, handed to
:func:`remember`), never from the file again: a file truncated or replaced after loading changes
nothing here. With the ``onnx`` package (no torch): the first ``Conv`` whose weights are
constants of the graph, directly or behind a ``DequantizeLinear`` (int8 models: the filters
shown are the dequantized ones), gives the filters; the graph cut after it (after its
activation, when one follows) gives the feature maps, run by its own small ONNX Runtime session,
built on first use and dropped with the version (a CPU session: it runs rarely, for a person
looking).
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from service.errors import UnsupportedTask
from service.runtime import Session, memory_session
from service.settings import Settings

if TYPE_CHECKING:  # imported when a graph is first read: importing the repository stays light
    import onnx

logger = logging.getLogger("convserve.layers")

_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "HardSigmoid", "Elu",
                "Tanh")
MAX_MAPS = 16


@dataclass(frozen=True)
class LayerSource:
    """The first convolution of a graph, as read at load time."""

    node: str  # its name in the graph
    weight: np.ndarray  # float32 [filters, channels, kh, kw], batch norm folded in by export
    stride: tuple[int, ...]
    output: str  # the tensor its feature maps are read from (after the activation, if any)
    activation: str | None
    cut: bytes  # the graph cut after ``output``
    input_name: str


@dataclass(frozen=True)
class FirstLayer:
    """The first convolution of a served graph, with a session that computes its maps."""

    source: LayerSource
    session: Session

    @property
    def node(self) -> str:
        return self.source.node

    @property
    def weight(self) -> np.ndarray:
        return self.source.weight

    @property
    def stride(self) -> tuple[int, ...]:
        return self.source.stride

    @property
    def activation(self) -> str | None:
        return self.source.activation

    def feature_maps(self, array: np.ndarray) -> np.ndarray:
        """``[filters, h, w]`` feature maps of the model's uint8 ``[H, W, C]`` input."""
        return self.session.run({self.source.input_name: array[None]}, [self.source.output],
                                alone=False)[0][0]


_LOCK = threading.Lock()
# Per loaded version (weakly: an entry goes with its version): the source, or why there is
# none, and the session once built.
_SOURCES: weakref.WeakKeyDictionary[Any, LayerSource | str] = weakref.WeakKeyDictionary()
_BUILT: weakref.WeakKeyDictionary[Any, FirstLayer] = weakref.WeakKeyDictionary()


def remember(version: Any, graph: bytes) -> None:
    """Read the first convolution of ``graph`` (the bytes ``version`` was loaded from) now, so
    that :func:`first_layer` never reads the file again. Never raises: a graph without one is
    remembered as the reason."""
    try:
        found: LayerSource | str = read_source(graph, version.name)
    except UnsupportedTask as exc:
        found = exc.message
    except Exception as exc:  # a graph ONNX Runtime loaded but onnx cannot take apart
        logger.warning("%s: first layer not readable: %s", version.key, exc)
        found = f"{version.name}: the graph's first layer cannot be read ({type(exc).__name__})"
    with _LOCK:
        _SOURCES[version] = found


def first_layer(version: Any, settings: Settings) -> FirstLayer:
    """The first convolution of the graph ``version`` serves; its session is built on first
    use. Blocking; thread-safe.

    Raises:
        UnsupportedTask: the graph has no convolution with constant weights (HTTP 422).
    """
    with _LOCK:
        built = _BUILT.get(version)
        if built is not None:
            return built
        source = _SOURCES.get(version)
        if source is None:
            raise UnsupportedTask(f"model {version.name!r}: the first layer of version "
                                  f"{version.version} was not read when it loaded; reload the "
                                  "repository")
        if isinstance(source, str):
            raise UnsupportedTask(source)
        built = _BUILT[version] = FirstLayer(source, memory_session(source.cut, settings))
        return built


def _weight(graph: onnx.GraphProto, conv: onnx.NodeProto) -> np.ndarray | None:
    """The convolution's weights: a constant, or a constant behind DequantizeLinear."""
    from onnx import numpy_helper

    constants = {i.name: i for i in graph.initializer}
    name = conv.input[1]
    if name in constants:
        return numpy_helper.to_array(constants[name]).astype(np.float32)
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear" or not all(
            i in constants for i in producer.input if i):
        return None
    values = numpy_helper.to_array(constants[producer.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(constants[producer.input[1]]).astype(np.float32)
    zero = (numpy_helper.to_array(constants[producer.input[2]]).astype(np.float32)
            if len(producer.input) > 2 and producer.input[2] else np.zeros_like(scale))
    if scale.ndim == 1:  # per output channel, along ``axis`` (default 1: here 0 is theirs)
        axis = next((a.i for a in producer.attribute if a.name == "axis"), 1)
        shape = [1] * values.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale  # type: ignore[no-any-return]


def read_source(graph_bytes: bytes, name: str) -> LayerSource:
    """The first convolution with constant weights in ``graph_bytes`` and the graph cut after it.

    Raises:
        UnsupportedTask: there is none (HTTP 422).
    """
    import onnx

    model = onnx.load_from_string(graph_bytes)
    graph = model.graph
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        weight = _weight(graph, conv)
        if weight is not None:
            break
    else:
        raise UnsupportedTask(f"model {name!r}: the graph has no convolution with constant "
                              "weights to show")
    consumers = [n for n in graph.node if conv.output[0] in n.input]
    follows = consumers[0] if len(consumers) == 1 and consumers[0].op_type in _ACTIVATIONS else None
    output = follows.output[0] if follows else conv.output[0]
    strides = next((list(a.ints) for a in conv.attribute if a.name == "strides"), [1, 1])
    return LayerSource(node=conv.name, weight=weight, stride=tuple(strides), output=output,
                       activation=follows.op_type if follows else None,
                       cut=_cut(model, output).SerializeToString(),
                       input_name=graph.input[0].name)


def _cut(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """``model`` down to the nodes ``output`` needs, with ``output`` its one output."""
    import onnx
    from onnx import helper

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
