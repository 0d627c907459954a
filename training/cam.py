"""Class activation maps from the exported graph (Zhou et al., 2016), by graph surgery.

A network that ends in global average pooling and a linear classifier computes
``logits[k] = b[k] + sum_c W[k, c] * mean_xy F[c, x, y]``, so the map for class ``k`` is
``M_k(x, y) = b[k] + sum_c W[k, c] * F[c, x, y]``: the classifier's row applied at every place of
the last feature map ``F``, whose spatial mean *is* the logit. :func:`find_head` finds that shape
(``GlobalAveragePool``/``ReduceMean`` -> optional ``Flatten`` -> ``Gemm`` -> ``Softmax``, or a
convolutional classifier before the pooling, as in mini-Xception, whose output is the maps).

ONNX Runtime computes every node of a graph on every run, whichever outputs the run asks for
(docs/explain.md: a ``cam`` output on MobileNetV2 made classify ~15% slower). So the maps are
split in two: ``model.onnx`` only gains a second output, its last feature map, a tensor it
computes anyway (no node is added: classify computes what it did, and its probabilities are
bit-identical), and a small head graph :data:`HEAD_FILE` turns ``(features, class)`` into that
class's map ``[N, 1, h, w]``. An explain
request runs the model once and the head once; no torch, no gradients.

Every change is checked with ONNX Runtime before it replaces anything: the spatial mean of the
maps, through a softmax, must give ``probabilities`` back (:func:`check_cam`), and the
probabilities must equal the original graph's. ``python -m training.cam models/NAME/VERSION``
upgrades a shipped model in place; :mod:`training.export` does it on every export.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from model_format import CARD_FILE, ClassifierCard, Explain, load_card, parse_card
from training.assets import sha256_of

CAM_OUTPUT = "cam"
FEATURES = "features"  # the head graph's input: the feature map
CLASS = "class"
HEAD_FILE = "explain.onnx"
TOLERANCE = 1e-5  # softmax(mean(cam)) against probabilities, max abs difference
_RESHAPES = ("Flatten", "Reshape", "Squeeze")


class CamError(ValueError):
    """The graph has no global-average-pooling + linear head; explain it by occlusion."""


@dataclass(frozen=True)
class CamHead:
    """Where the maps come from in a graph."""

    features: str  # the pooled tensor, [N, C, h, w] (or [N, K, h, w] for a conv classifier)
    weight: str | None  # the Gemm's weight initializer, None when ``features`` are the maps
    bias: str | None
    trans_b: bool  # Gemm's transB: weight is [K, C] (True) or [C, K]


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _is_spatial_mean(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = [int(axis) for axis in _attribute(node, "axes", []) or []]
    if not axes and len(node.input) > 1:
        initializers = {i.name: i for i in graph.initializer}
        if node.input[1] in initializers:
            axes = numpy_helper.to_array(initializers[node.input[1]]).tolist()
    return sorted(a % 4 for a in axes) == [2, 3]


def find_head(model: onnx.ModelProto, output: str = "probabilities") -> CamHead:
    """The pooled feature map and classifier behind ``output``.

    Raises:
        CamError: the head is not global average pooling + a linear classifier (or a conv
            classifier before the pooling); the message says what was found instead.
    """
    graph = model.graph
    producers = _producers(graph)
    node = producers.get(output)
    if node is None:
        raise CamError(f"the graph has no output {output!r}")
    if node.op_type == "Softmax":
        node = producers[node.input[0]]
    gemm = None
    if node.op_type == "Gemm":
        if _attribute(node, "transA", 0) or _attribute(node, "alpha", 1.0) != 1.0 or (
                _attribute(node, "beta", 1.0) != 1.0):
            raise CamError("the classifier Gemm is scaled or transposed on its input")
        initializers = {i.name for i in graph.initializer}
        if node.input[1] not in initializers:
            raise CamError("the classifier's weights are not a constant of the graph")
        gemm = node
        node = producers[node.input[0]]
    while node.op_type in _RESHAPES:
        node = producers[node.input[0]]
    if not _is_spatial_mean(node, graph):
        raise CamError(f"the classifier reads a {node.op_type}, not a global average pooling "
                       "of a feature map (fully connected layers): use occlusion")
    if gemm is None:
        classifier = producers.get(node.input[0])
        if classifier is None or classifier.op_type != "Conv":
            raise CamError("global average pooling of something other than a convolution "
                           "ends the graph: no linear classifier to apply")
        return CamHead(features=node.input[0], weight=None, bias=None, trans_b=False)
    bias = gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else None
    return CamHead(features=node.input[0], weight=gemm.input[1], bias=bias,
                   trans_b=bool(_attribute(gemm, "transB", 0)))


def add_feature_output(model: onnx.ModelProto, head: CamHead) -> onnx.ModelProto:
    """A copy of ``model`` whose pooled feature map (``head.features``) is also a graph output:
    a tensor the graph computes anyway, so no node is added and classify computes what it did.

    Raises:
        CamError: the graph outputs it already.
    """
    if any(o.name == head.features for o in model.graph.output):
        raise CamError(f"the graph already outputs {head.features!r}")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    result.graph.output.append(helper.make_tensor_value_info(
        head.features, onnx.TensorProto.FLOAT, ["batch", "channels", "height", "width"]))
    onnx.checker.check_model(result)
    return result


def head_graph(model: onnx.ModelProto, head: CamHead) -> onnx.ModelProto:
    """The small graph ``(features [N, C, h, w], class int64 [1]) -> cam [N, 1, h, w]``: the
    classifier's row for ``class`` (and its bias) as a 1x1 convolution of the features; for a
    convolutional classifier, channel ``class`` of its output."""
    nodes, initializers = [], []
    if head.weight is None:
        nodes.append(helper.make_node("Gather", [FEATURES, CLASS], [CAM_OUTPUT], axis=1))
    else:
        constants = {i.name: i for i in model.graph.initializer}
        weight = numpy_helper.to_array(constants[head.weight])
        weight = weight if head.trans_b else weight.T  # [K, C]
        initializers.append(numpy_helper.from_array(
            np.ascontiguousarray(weight[:, :, None, None], np.float32), "weight"))
        nodes.append(helper.make_node("Gather", ["weight", CLASS], ["row"], axis=0))
        inputs = [FEATURES, "row"]
        if head.bias is not None:
            bias = numpy_helper.to_array(constants[head.bias]).reshape(-1).astype(np.float32)
            initializers.append(numpy_helper.from_array(bias, "bias"))
            nodes.append(helper.make_node("Gather", ["bias", CLASS], ["row_bias"], axis=0))
            inputs.append("row_bias")
        nodes.append(helper.make_node("Conv", inputs, [CAM_OUTPUT], kernel_shape=[1, 1]))
    graph = helper.make_graph(
        nodes, "explain-head",
        [helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT,
                                       ["batch", "channels", "height", "width"]),
         helper.make_tensor_value_info(CLASS, onnx.TensorProto.INT64, [1])],
        [helper.make_tensor_value_info(CAM_OUTPUT, onnx.TensorProto.FLOAT,
                                       ["batch", 1, "height", "width"])],
        initializers)
    result = helper.make_model(graph, opset_imports=list(model.opset_import),
                               producer_name="convserve.training.cam")
    result.ir_version = model.ir_version
    onnx.checker.check_model(result)
    return result


def class_maps(model: Path | bytes, head: Path | bytes, images: np.ndarray, features: str,
               output: str = "probabilities") -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities [N, K], maps [N, K, h, w])`` of ``images`` (uint8 NHWC) with ONNX Runtime:
    one run of ``model`` (``features``: its feature-map output), then the head once per class
    (for checks and tests)."""
    import onnxruntime as ort

    cpu = ["CPUExecutionProvider"]
    main = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=cpu)
    tail = ort.InferenceSession(head if isinstance(head, bytes) else str(head), providers=cpu)
    probabilities, pooled = main.run([output, features], {main.get_inputs()[0].name: images})
    maps = [tail.run([CAM_OUTPUT], {FEATURES: pooled, CLASS: np.array([k], np.int64)})[0]
            for k in range(probabilities.shape[1])]
    return probabilities, np.concatenate(maps, axis=1)


def check_cam(probabilities: np.ndarray, maps: np.ndarray) -> float:
    """Max |softmax(mean_xy maps) - probabilities|: the maps' means are the logits.

    Raises:
        CamError: the difference is over :data:`TOLERANCE` (the maps do not explain the answer).
    """
    logits = maps.astype(np.float64).mean(axis=(2, 3))
    logits -= logits.max(axis=1, keepdims=True)
    again = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    worst = float(np.abs(again - probabilities).max())
    if worst > TOLERANCE:
        raise CamError(f"softmax of the maps' means differs from the probabilities by {worst:.3g}"
                       f" (> {TOLERANCE}): the maps would not explain this graph's answers")
    return worst


def add_explain(version_dir: Path, images: np.ndarray) -> Explain:
    """Give the graph in ``version_dir`` class activation maps where its head allows: rewrite
    ``model.onnx`` with its pooled feature map as an output and write :data:`HEAD_FILE`, checked
    (:func:`check_cam`, and unchanged probabilities) before they replace anything. Returns the
    ``explain`` entry of its ``model.json`` (``occlusion`` when the head has no such shape)."""
    path = version_dir / "model.onnx"
    model = onnx.load(str(path))
    try:
        head = find_head(model)
    except CamError as error:
        return Explain(method="occlusion", reason=str(error))
    with_features = add_feature_output(model, head).SerializeToString()
    tail = head_graph(model, head).SerializeToString()
    probabilities, maps = class_maps(with_features, tail, images, head.features)
    check_cam(probabilities, maps)
    import onnxruntime as ort

    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    unchanged = original.run(["probabilities"], {original.get_inputs()[0].name: images})[0]
    if not np.array_equal(unchanged, probabilities):
        raise CamError("adding the features output changed the probabilities")
    (version_dir / HEAD_FILE).write_bytes(tail)
    partial = path.with_suffix(".onnx.tmp")
    partial.write_bytes(with_features)
    partial.replace(path)
    return Explain(method="cam", output=head.features, file=HEAD_FILE,
                   sha256=sha256_of(version_dir / HEAD_FILE))


def prefer(explain: Explain, occlusion_reason: str | None) -> Explain:
    """``explain`` with occlusion as the default method when a reason is given (the maps stay
    available as ``method=cam``)."""
    if occlusion_reason and explain.method == "cam":
        return explain.model_copy(update={"method": "occlusion", "reason": occlusion_reason})
    return explain


def upgrade(version_dir: Path, images: np.ndarray | None = None,
            prefer_occlusion: str | None = None) -> ClassifierCard:
    """Add maps to the model in ``version_dir`` in place and record them in its ``model.json``
    (written last, atomically; its other fields keep their order). ``images``: uint8 NHWC check
    images at the input size (default: mid-grey and noise: the checks are identities that hold
    for any input). ``prefer_occlusion``: keep the maps but make occlusion the default, for this
    reason (measured)."""
    card_path = version_dir / CARD_FILE
    card = load_card(card_path)
    if not isinstance(card, ClassifierCard):
        raise CamError(f"{version_dir} is not a classifier")
    if card.explain is not None:
        return card
    if images is None:
        shape = (card.input.height, card.input.width, card.input.channels)
        noise = np.random.default_rng(0).integers(0, 256, (3, *shape), dtype=np.uint8)
        images = np.concatenate([np.full((1, *shape), 128, np.uint8), noise])
    explain = prefer(add_explain(version_dir, images), prefer_occlusion)
    document = json.loads(card_path.read_text())
    document["explain"] = explain.model_dump(exclude_none=True)
    if explain.file:
        document["onnx_sha256"] = sha256_of(version_dir / "model.onnx")
    updated = parse_card(document, str(card_path))
    assert isinstance(updated, ClassifierCard)
    partial = card_path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    partial.replace(card_path)
    return updated


def main(argv: list[str] | None = None) -> int:
    """Command line: add class activation maps to shipped models in place."""
    parser = argparse.ArgumentParser(prog="python -m training.cam",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", type=Path, help="models/NAME/VERSION directories")
    parser.add_argument("--prefer-occlusion", metavar="REASON",
                        help="keep the maps but make occlusion the default, for this reason")
    args = parser.parse_args(argv)
    for directory in args.versions:
        card = upgrade(directory, prefer_occlusion=args.prefer_occlusion)
        assert card.explain is not None
        print(f"{directory}: {card.explain.method}"  # noqa: T201
              + (f" ({card.explain.reason})" if card.explain.reason else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
