"""The page's "where did it look?" toggle and "first layer" view in headless Chromium.

A real uvicorn process serves the shipped MobileNetV2; the browser classifies skimage's cat,
turns the toggle on and reads the explained photo it shows (the API's PNG, drawn where the
photo was), then opens the first-layer view: one small image per filter and the strongest
feature maps of the photo. Screenshots go to ``artifacts/`` (git-ignored).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import chromium
import httpx
import numpy as np
import pytest
from conftest import serve_models
from PIL import Image
from playwright.sync_api import Browser, Page

from training.assets import fetch

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"


@pytest.fixture(scope="module")
def url(shipped_repository: Callable[..., Path]) -> Iterator[str]:
    with serve_models(shipped_repository("imagenet-mobilenetv2")) as (_, address):
        yield address


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium.launch() as browser:
        yield browser


@pytest.fixture()
def page(browser: Browser, url: str) -> Iterator[Page]:
    with chromium.open_page(browser, url, height=1600) as page:
        page.select_option("#model", "imagenet-mobilenetv2")
        yield page


def _shown_pixels(page: Page, selector: str) -> np.ndarray:
    """The pixels of an <img> as the page has them (drawn onto a canvas)."""
    data_url = page.eval_on_selector(selector, """img => {
        const c = document.createElement("canvas");
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext("2d").drawImage(img, 0, 0);
        return c.toDataURL("image/png"); }""")
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), np.int16)


def test_where_did_it_look_overlays_the_map(page: Page, url: str) -> None:
    photo = fetch("chelsea")
    page.set_input_files("#file", str(photo))
    page.click("#submit")
    page.wait_for_selector("#explain", state="visible")
    classes = page.eval_on_selector_all("#explain-class option", "o => o.map(x => x.value)")
    labels = page.eval_on_selector_all("#results > .bar", "b => b.map(x => x.dataset.label)")
    assert classes == labels and len(classes) == 5
    page.check("#explain-toggle")
    page.wait_for_selector(f'#explain-image[data-class="{classes[0]}"]', state="visible")
    assert page.is_hidden("#preview")
    shown = _shown_pixels(page, "#explain-image")
    api = httpx.post(f"{url}/v1/models/imagenet-mobilenetv2/explain",
                     params={"format": "png", "class": classes[0]},
                     files={"file": (photo.name, photo.read_bytes())})
    expected = np.asarray(Image.open(io.BytesIO(api.content)).convert("RGB"), np.int16)
    assert shown.shape == expected.shape and np.abs(shown - expected).max() <= 2
    original = np.asarray(Image.open(photo).convert("RGB"), np.int16)
    assert np.abs(shown - original).mean() > 5  # a map is blended over the photo
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-explain.png"), full_page=True)

    page.select_option("#explain-class", classes[1])  # another class, another map
    page.wait_for_selector(f'#explain-image[data-class="{classes[1]}"]', state="visible")
    assert np.abs(_shown_pixels(page, "#explain-image") - shown).max() > 20
    page.uncheck("#explain-toggle")
    assert page.is_hidden("#explain-image") and page.is_visible("#preview")


def test_first_layer_shows_filters_and_maps(page: Page, url: str) -> None:
    page.click("#first-layer summary")
    page.wait_for_selector("#filters canvas.filter")
    layer = httpx.get(f"{url}/v1/models/imagenet-mobilenetv2/first-layer").json()
    assert page.eval_on_selector_all("#filters canvas", "c => c.length") == layer["shape"][0]
    # The first filter as drawn: the API's values, 3x3 RGB.
    drawn = page.eval_on_selector(
        "#filters canvas", "c => Array.from(c.getContext('2d').getImageData(0, 0, 3, 3).data)")
    expected = np.round(np.array(layer["filters"][0]) * 255).reshape(-1, 3)
    assert np.abs(np.array(drawn).reshape(-1, 4)[:, :3] - expected).max() <= 1
    assert page.eval_on_selector_all("#feature-maps img", "i => i.length") == 0
    page.set_input_files("#file", str(fetch("chelsea")))
    page.wait_for_function("document.querySelectorAll('#feature-maps img').length === 8")
    assert "strongest" in page.inner_text("#first-layer-note")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-first-layer.png"), full_page=True)
