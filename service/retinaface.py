"""Face detection with RetinaFace (MobileNetV2 backbone) in one ONNX graph.

The graph is the ``retinaface`` wheel's ``frozen_graph.pb`` converted by
``training/ship_retinaface.py``: anchors, box and landmark decoding and non-maximum suppression
are inside it. It takes one float32 RGB image in [0, 255], NHWC, whose sides are multiples of
32, and answers ``[N, 16]``: box ``x1, y1, x2, y2``, five landmarks ``(x, y)`` (left eye, right
eye, nose, mouth left, mouth right), all as fractions of the padded image's width and height,
then a landmark flag and the face score.

:class:`RetinaFace` pads the image on the right and bottom (with zeros, as the package's own
``predict`` does), runs the graph, maps the fractions back to pixels and keeps faces scoring at
least ``threshold``. Its smallest anchor is 16 px at stride 8, so faces under ~12 px are missed;
:func:`service.detection.detect_bounded` chooses the working copy's size, at most
:data:`LONGEST_SIDE` px long: faces much larger than its largest anchors (512 px) come apart into
false small faces.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.faces import DetectorConfig, Face

STRIDE = 32  # both sides of the graph's input are multiples of this
SMALLEST_FACE = 12  # px: below this (its smallest anchor is 16 px) faces are not found
SHARP_FACE = 64  # px: faces larger than this in the working copy gain nothing from more pixels
# px: the working copy's longest side at most. Its largest anchors are 512 px: faces much larger
# than that are split into false small faces (measured on 3x upscaled close-ups, docs/faces.md).
LONGEST_SIDE = 1024
DEFAULT_THRESHOLD = 0.95  # face score kept (upstream default; docs/faces.md)

RetinaGraph = Callable[[np.ndarray], np.ndarray]  # [1, H, W, 3] float32 -> [N, 16]


class RetinaFace:
    """One-graph face detector.

    Args:
        graph: Runs the ONNX graph on a ``[1, H, W, 3]`` float32 batch, answering ``[N, 16]``.
        threshold: Smallest face score kept.
    """

    smallest_face = SMALLEST_FACE
    sharp_face = SHARP_FACE
    longest_side = LONGEST_SIDE

    def __init__(self, graph: RetinaGraph, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.graph = graph
        self.threshold = threshold

    def detect(self, image: np.ndarray, config: DetectorConfig | None = None) -> list[Face]:
        """Faces in an ``[H, W, 3]`` uint8 RGB image, best score first.

        ``config.min_face_size`` drops faces whose box's longer side is smaller.
        """
        config = config or DetectorConfig()
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"RetinaFace needs an [H, W, 3] RGB image, got shape {image.shape}")
        height, width = image.shape[:2]
        padded_h, padded_w = -(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE
        batch = np.zeros((1, padded_h, padded_w, 3), np.float32)
        batch[0, :height, :width] = image
        rows = np.asarray(self.graph(batch), dtype=np.float64).reshape(-1, 16)
        rows = rows[rows[:, 15] >= self.threshold]
        points = rows[:, :14].reshape(-1, 7, 2) * (padded_w, padded_h)
        faces = []
        for row, point in zip(rows, points, strict=True):
            (x1, y1), (x2, y2) = point[0], point[1]
            if max(x2 - x1, y2 - y1) < config.min_face_size:
                continue
            faces.append(Face(box=(float(x1), float(y1), float(x2), float(y2)),
                              score=float(row[15]), landmarks=point[2:].copy()))
        faces.sort(key=lambda face: -face.score)
        return faces
