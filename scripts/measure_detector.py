"""Measure the shipped MTCNN face detector (``models/face-mtcnn``) on real photos.

Prints, per photo, the faces found against the faces in it, the detection scores and the time
(median of ``--repeat`` runs, ONNX Runtime on the CPU unless ``--providers`` says otherwise).

Usage::

    python scripts/measure_detector.py [--models-dir models] [--repeat 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.faces import MTCNN, DetectorConfig  # noqa: E402
from training.assets import fetch  # noqa: E402

# asset -> faces in the photo (counted by eye)
PHOTOS = {
    "multi-face": 5, "single-face": 1, "face-happy": 1, "face-surprise": 1, "face-anger": 1,
    "face-disgust": 1, "astronaut": 1, "coffee": 0, "rocket": 0, "chelsea": 0, "china": 0,
    "flower": 0,
}


def load_detector(directory: Path, providers: list[str], threads: int) -> MTCNN:
    """The three graphs of a ``face-mtcnn`` version directory as an :class:`MTCNN`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    graphs = {}
    for name in ("pnet", "rnet", "onet"):
        session = ort.InferenceSession(str(directory / f"{name}.onnx"), options,
                                       providers=providers)
        graphs[name] = lambda x, s=session: s.run(None, {"image": x})
    return MTCNN(graphs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--version", default="1")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--providers", default="CPUExecutionProvider")
    args = parser.parse_args(argv)
    directory = args.models_dir / "face-mtcnn" / args.version
    detector = load_detector(directory, args.providers.split(","), args.threads)
    print(f"detector {directory} on {args.providers}, {args.threads} thread(s), "  # noqa: T201
          f"min_face_size {DetectorConfig().min_face_size}")
    print(f"{'photo':14} {'size':>10} {'found':>5} {'faces':>5}  {'ms':>7}  scores")  # noqa: T201
    right = 0
    for name, expected in PHOTOS.items():
        image = np.asarray(Image.open(fetch(name)).convert("RGB"))
        times, faces = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            faces = detector.detect(image)
            times.append(time.perf_counter() - start)
        right += len(faces) == expected
        size = f"{image.shape[1]}x{image.shape[0]}"
        scores = " ".join(f"{f.score:.3f}" for f in faces)
        print(f"{name:14} {size:>10} {len(faces):>5} {expected:>5}  "  # noqa: T201
              f"{statistics.median(times) * 1000:7.1f}  {scores}")
    print(f"{right}/{len(PHOTOS)} photos with exactly the faces they contain")  # noqa: T201
    return 0 if right == len(PHOTOS) else 1


if __name__ == "__main__":
    sys.exit(main())
