"""Face detection with MTCNN's three ONNX graphs, and face crops for the expression model.

The cascade follows facenet-pytorch's ``detect_face`` (its weights are the ones exported by
``training/mtcnn.py``), in numpy around ONNX Runtime:

1. **Image pyramid.** Scales ``12 / min_face_size * factor**k`` while the shorter side is still
   at least 12 px. Each level is an area resample of the whole image (the mean of each output
   pixel's source rectangle, exactly ``torch`` ``interpolate(mode="area")``), read from one
   integral image, so every level costs O(its own pixels).
2. **P-Net** (dynamic H, W) scores every 12x12 window at stride 2; windows above
   ``thresholds[0]`` become boxes; NMS per level (IoU 0.5), then across levels (0.7); box
   regression; boxes made square.
3. **R-Net** on 24x24 crops of those boxes (clipped to the image): ``thresholds[1]``, NMS 0.7,
   regression, square.
4. **O-Net** on 48x48 crops: ``thresholds[2]``, regression, five landmarks, NMS 0.7 over the
   smaller area ("Min").

:func:`face_crop` cuts a square around a box with a margin, turns it so that the eyes are level
(from O-Net's landmarks), and resizes it to the expression model's input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

Graph = Callable[[np.ndarray], list[np.ndarray]]  # float32 NHWC pixels -> the graph's outputs
DEFAULT_MARGIN = 0.2  # face_crop's margin on each side, as a fraction of the box side


@dataclass(frozen=True)
class DetectorConfig:
    """MTCNN's parameters (facenet-pytorch's defaults)."""

    min_face_size: int = 20  # smallest face side searched for, in pixels
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-, R-, O-Net score thresholds
    factor: float = 0.709  # pyramid scale step


@dataclass(frozen=True)
class Face:
    """One detected face, in the detected image's pixel coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 (may extend past the image)
    score: float  # O-Net's face probability
    landmarks: np.ndarray  # [5, 2] (x, y): left eye, right eye, nose, mouth left, mouth right

    def clipped(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box as integer ``(x, y, width, height)`` inside a ``width`` x ``height`` image."""
        x1 = min(max(round(self.box[0]), 0), width)
        y1 = min(max(round(self.box[1]), 0), height)
        x2 = min(max(round(self.box[2]), x1), width)
        y2 = min(max(round(self.box[3]), y1), height)
        return x1, y1, x2 - x1, y2 - y1


class IntegralImage:
    """Summed-area table of an ``[H, W, C]`` image for area resampling of any rectangle."""

    def __init__(self, image: np.ndarray) -> None:
        height, width, channels = image.shape
        table = np.zeros((height + 1, width + 1, channels), np.int64)  # exact sums
        np.cumsum(np.cumsum(image, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
        self.table = table
        self.height, self.width = height, width

    def resample(self, top: int, left: int, bottom: int, right: int,
                 out_h: int, out_w: int) -> np.ndarray:
        """Area-resample ``image[top:bottom, left:right]`` to ``[out_h, out_w, C]`` float32.

        Output pixel ``i`` averages source rows ``floor(i*h/out_h)`` to ``ceil((i+1)*h/out_h)``
        (PyTorch's adaptive average pooling), and likewise for columns.
        """
        (ys0, ys1), (xs0, xs1) = _bins(bottom - top, out_h), _bins(right - left, out_w)
        rows = self.table[ys1[0] + top] - self.table[ys0[0] + top]  # separable: rows first
        sums = rows[:, xs1[0] + left] - rows[:, xs0[0] + left]
        area = np.outer(ys1[0] - ys0[0], xs1[0] - xs0[0])[:, :, None]
        return (sums / area).astype(np.float32)

    def resample_many(self, boxes: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
        """:meth:`resample` of ``[N, 4]`` integer ``(top, left, bottom, right)`` rectangles at
        once: ``[N, out_h, out_w, C]`` float32."""
        ys0, ys1 = _bins(boxes[:, 2] - boxes[:, 0], out_h)
        xs0, xs1 = _bins(boxes[:, 3] - boxes[:, 1], out_w)
        ys0, ys1 = ys0 + boxes[:, :1], ys1 + boxes[:, :1]  # [N, out_h]
        xs0, xs1 = xs0 + boxes[:, 1:2], xs1 + boxes[:, 1:2]  # [N, out_w]
        t = self.table
        r0, r1 = ys0[:, :, None], ys1[:, :, None]
        c0, c1 = xs0[:, None, :], xs1[:, None, :]
        sums = t[r1, c1] - t[r0, c1] - t[r1, c0] + t[r0, c0]
        area = ((ys1 - ys0)[:, :, None] * (xs1 - xs0)[:, None, :])[..., None]
        return (sums / area).astype(np.float32)


def _bins(sizes: np.ndarray | int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each output pixel's source bin: ``[N, out]`` each."""
    i = np.arange(out, dtype=np.int64)[None, :]
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 1)
    return (i * sizes) // out, -((-(i + 1) * sizes) // out)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union",
        ) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    Args:
        boxes: ``[N, 4]`` x1, y1, x2, y2.
        scores: ``[N]``.
        threshold: Overlap above which the lower-scoring box is dropped.
        method: ``"union"`` (IoU, areas without +1, as torchvision) or ``"min"`` (intersection
            over the smaller area, pixel-inclusive +1 areas, as MTCNN's last stage).
    """
    plus = 1.0 if method == "min" else 0.0
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1 + plus) * (y2 - y1 + plus)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = w * h
        if method == "min":
            overlap = inter / np.minimum(areas[i], areas[rest])
        else:
            overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (MTCNN's ``rerec``)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply R/O-Net box regression (pixel-inclusive widths, as ``bbreg``)."""
    boxes = boxes.copy()
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    boxes[:, 0:4] += offsets * np.concatenate([w, h, w, h], axis=1)
    return boxes


class MTCNN:
    """The P/R/O-Net cascade on ONNX graphs.

    Args:
        graphs: ``{"pnet", "rnet", "onet"}`` -> a function running that graph on a float32
            NHWC batch of RGB pixels in [0, 255] and returning its outputs in order
            (``scores, regression[, landmarks]``).
    """

    smallest_face = 12  # P-Net's window: the smallest face it sees, in pixels
    sharp_face = 48  # O-Net's input side: more pixels per face than this add nothing
    longest_side = 1 << 30  # no limit of its own (the pyramid finds faces of any size)

    def __init__(self, graphs: Mapping[str, Graph]) -> None:
        missing = {"pnet", "rnet", "onet"} - set(graphs)
        if missing:
            raise ValueError(f"MTCNN needs the graphs pnet, rnet and onet; missing {missing}")
        self.graphs = graphs

    def detect(self, image: np.ndarray, config: DetectorConfig | None = None) -> list[Face]:
        """Faces in an ``[H, W, 3]`` uint8 RGB image, best score first."""
        config = config or DetectorConfig()
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"MTCNN needs an [H, W, 3] RGB image, got shape {image.shape}")
        integral = IntegralImage(image)
        boxes = self._propose(integral, config)
        if len(boxes):
            boxes = self._refine(integral, boxes, config.thresholds[1])
        if not len(boxes):
            return []
        return self._output(integral, boxes, config.thresholds[2])

    def _propose(self, integral: IntegralImage, config: DetectorConfig) -> np.ndarray:
        height, width = integral.height, integral.width
        scale = 12.0 / config.min_face_size
        shorter = min(height, width) * scale
        found = []
        while shorter >= 12:
            level_h, level_w = int(height * scale + 1), int(width * scale + 1)
            level = integral.resample(0, 0, height, width, level_h, level_w)
            scores, offsets = self.graphs["pnet"](level[None])[:2]
            ys, xs = np.nonzero(scores[0] >= config.thresholds[0])
            if len(ys):
                corner = np.stack([xs, ys], axis=1).astype(np.float64)
                q1 = np.floor((2 * corner + 1) / scale)
                q2 = np.floor((2 * corner + 12) / scale)
                level_boxes = np.concatenate([q1, q2, scores[0][ys, xs][:, None],
                                              offsets[0][:, ys, xs].T], axis=1)
                found.append(level_boxes[nms(level_boxes[:, :4], level_boxes[:, 4], 0.5)])
            scale *= config.factor
            shorter *= config.factor
        if not found:
            return np.zeros((0, 5))
        boxes = np.concatenate(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        w = (boxes[:, 2] - boxes[:, 0])[:, None]
        h = (boxes[:, 3] - boxes[:, 1])[:, None]
        moved = boxes[:, :4] + boxes[:, 5:9] * np.concatenate([w, h, w, h], axis=1)
        return _square(np.concatenate([moved, boxes[:, 4:5]], axis=1))

    def _crops(self, integral: IntegralImage, boxes: np.ndarray, size: int,
               ) -> tuple[np.ndarray, np.ndarray]:
        """``[N, size, size, 3]`` crops of the boxes (clipped to the image), and which boxes."""
        corners = np.trunc(boxes[:, :4]).astype(np.int64)
        x1 = np.maximum(corners[:, 0], 1) - 1
        y1 = np.maximum(corners[:, 1], 1) - 1
        x2 = np.minimum(corners[:, 2], integral.width)
        y2 = np.minimum(corners[:, 3], integral.height)
        valid = np.nonzero((x2 > x1) & (y2 > y1))[0]
        rectangles = np.stack([y1, x1, y2, x2], axis=1)[valid]
        return integral.resample_many(rectangles, size, size), valid

    def _refine(self, integral: IntegralImage, boxes: np.ndarray, threshold: float,
                ) -> np.ndarray:
        crops, valid = self._crops(integral, boxes, 24)
        if not len(valid):
            return np.zeros((0, 5))
        scores, offsets = self.graphs["rnet"](crops)[:2]
        keep = scores > threshold
        boxes = np.concatenate([boxes[valid][keep, :4], scores[keep, None]], axis=1)
        offsets = offsets[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[pick], offsets[pick]))

    def _output(self, integral: IntegralImage, boxes: np.ndarray, threshold: float,
                ) -> list[Face]:
        crops, valid = self._crops(integral, boxes, 48)
        if not len(valid):
            return []
        scores, offsets, points = self.graphs["onet"](crops)[:3]
        keep = scores > threshold
        boxes = np.concatenate([boxes[valid][keep, :4], scores[keep, None]], axis=1)
        offsets, points = offsets[keep], points[keep]
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1
        xs = w * points[:, :5] + boxes[:, 0:1] - 1
        ys = h * points[:, 5:] + boxes[:, 1:2] - 1
        boxes = _regress(boxes, offsets)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, method="min")
        return [Face(box=(float(boxes[k, 0]), float(boxes[k, 1]), float(boxes[k, 2]),
                          float(boxes[k, 3])), score=float(boxes[k, 4]),
                     landmarks=np.stack([xs[k], ys[k]], axis=1)) for k in pick]


def eye_angle(face: Face) -> float:
    """Degrees the eye line is turned (counter-clockwise positive, image y pointing down)."""
    (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
    return -math.degrees(math.atan2(ry - ly, rx - lx))


def face_crop(image: Image.Image, face: Face, size: tuple[int, int], *,
              margin: float = DEFAULT_MARGIN, align: bool = True) -> Image.Image:
    """A square crop around ``face``, eyes levelled, resized to ``size`` (width, height).

    Args:
        image: The photo the face was detected in (any mode; the crop keeps it).
        face: The detection.
        size: Output ``(width, height)``.
        margin: Added on each side, as a fraction of the box's longer side.
        align: Rotate about the box centre so that the eyes are level.

    Pixels outside the photo repeat its edge, so faces at the border keep their proportions.
    """
    x1, y1, x2, y2 = face.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    angle = eye_angle(face) if align else 0.0
    turn = math.radians(angle)
    outer = side * (abs(math.cos(turn)) + abs(math.sin(turn)))  # square holding the turned one
    left, top = math.floor(cx - outer / 2) - 1, math.floor(cy - outer / 2) - 1
    span = math.ceil(outer) + 2  # holds the turned square, whatever the rounding
    region = Image.fromarray(_padded_region(image, left, top, span))
    cx, cy = cx - left, cy - top  # the centre in the region
    if not angle:
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        return region.resize(size, Image.Resampling.BILINEAR, box=box)
    scaled = math.ceil(span * max(size) / side)  # turn near the output resolution
    scale = scaled / span
    patch = region.resize((scaled, scaled), Image.Resampling.BILINEAR)
    # Image.rotate turns counter-clockwise: turning by -angle undoes the face's turn.
    patch = patch.rotate(-angle, resample=Image.Resampling.BILINEAR,
                         center=(cx * scale, cy * scale))
    half = side * scale / 2
    box = (cx * scale - half, cy * scale - half, cx * scale + half, cy * scale + half)
    return patch.resize(size, Image.Resampling.BILINEAR, box=box)


def _padded_region(image: Image.Image, left: int, top: int, span: int) -> np.ndarray:
    """``image``'s pixels ``[top:top+span, left:left+span]``, edge-padded where it leaves the
    image. Only that region is copied out of the photo, never the whole photo."""
    width, height = image.size
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + span, height), min(left + span, width)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"the face box lies outside the {width}x{height} image")
    region = np.asarray(image.crop((x0, y0, x1, y1)))
    pads = [(y0 - top, top + span - y1), (x0 - left, left + span - x1)]
    pads += [(0, 0)] * (region.ndim - 2)
    return np.pad(region, pads, mode="edge") if any(p for pair in pads for p in pair) else region
