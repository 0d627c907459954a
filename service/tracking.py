"""Face tracks across the frames of one stream: ids that stay with a face, smoothed expressions.

:class:`Tracker` is a greedy IoU tracker with constant-velocity prediction (in the spirit of
SORT without the Kalman filter): each live track predicts its box in the new frame by adding its
last displacement; every (track, detection) pair is scored by the IoU of the predicted box and
the detected one; pairs are taken best IoU first while both are free and the IoU is at least
``min_iou``. A detection left over starts a new track with the next id; a track left over is kept
``max_missed`` frames (predicted forward) and then ended. Ids are never reused within a stream.

When two faces cross, their predicted boxes carry each face past the other while both are
seen, so the ids usually survive a crossing; while one face hides the other, the hidden one's
track coasts on its prediction and is picked up again when it reappears within ``max_missed``
frames near where it was heading. Two faces that stop at the crossing point can swap ids: IoU
alone cannot tell them apart.

Expression probabilities are smoothed per track by an exponential moving average over time
(not frames, so dropped frames do not change the smoothing): with ``dt`` seconds since the
track's last update, ``smoothed = smoothed + (1 - 2**(-dt / half_life)) * (raw - smoothed)``,
so a change of expression is half taken up after ``half_life`` seconds. A new track starts at
its raw probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``[N, 4]`` with every box in ``b`` ``[M, 4]``: ``[N, M]``."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


@dataclass
class Track:
    """One face followed across frames."""

    id: int
    box: np.ndarray  # [4] last seen (or predicted) box
    velocity: np.ndarray  # [4] box change per frame
    smoothed: np.ndarray  # smoothed probabilities
    updated: float  # time of the last update, seconds
    missed: int = 0  # frames since last seen
    hits: int = 1  # frames seen

    def predicted(self) -> np.ndarray:
        return self.box + self.velocity


@dataclass(frozen=True)
class TrackedFace:
    """A detection of this frame, with the track it belongs to."""

    index: int  # position in the frame's detections
    track_id: int
    smoothed: np.ndarray  # smoothed probabilities
    frames: int  # frames this track has been seen in


@dataclass
class Tracker:
    """Greedy IoU tracker with constant-velocity prediction and time-based smoothing."""

    min_iou: float = 0.3  # smallest IoU (predicted vs detected box) that continues a track
    max_missed: int = 10  # frames a track survives without a detection
    half_life_s: float = 0.3  # smoothing: half of a change taken up after this many seconds
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1

    def update(self, boxes: list[Box], probabilities: list[np.ndarray], now: float,
               ) -> list[TrackedFace]:
        """Assign this frame's detections to tracks; answer one :class:`TrackedFace` each, in
        the detections' order."""
        detected = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        predicted = np.asarray([t.predicted() for t in self.tracks]).reshape(-1, 4)
        overlap = iou_matrix(predicted, detected)
        pairs: dict[int, int] = {}  # detection -> track index
        for flat in np.argsort(-overlap, axis=None, kind="stable"):
            t, d = np.unravel_index(flat, overlap.shape)
            if overlap[t, d] < self.min_iou:
                break
            if d not in pairs and t not in pairs.values():
                pairs[int(d)] = int(t)
        answers = []
        for d in range(len(detected)):
            raw = np.asarray(probabilities[d], dtype=np.float64)
            if d in pairs:
                track = self.tracks[pairs[d]]
                track.velocity = 0.5 * track.velocity + 0.5 * (detected[d] - track.box)
                track.box, track.missed, track.hits = detected[d], 0, track.hits + 1
                weight = 1.0 - 2.0 ** (-max(now - track.updated, 0.0) / self.half_life_s)
                track.smoothed = track.smoothed + weight * (raw - track.smoothed)
                track.updated = now
            else:
                track = Track(self.next_id, detected[d], np.zeros(4), raw.copy(), now)
                self.next_id += 1
                self.tracks.append(track)
            answers.append(TrackedFace(d, track.id, track.smoothed.copy(), track.hits))
        seen = {answer.track_id for answer in answers}
        for track in self.tracks:
            if track.id not in seen:
                track.missed += 1
                track.box = track.predicted()
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return answers
