"""The web page at ``/`` in a real browser: headless Chromium (Debian's) driven by Playwright.

A real uvicorn process serves the shipped ImageNet classifier, expression model and face
detector. The browser picks a model, uploads (or drops) a real photo and the test reads what the
page shows: the top classes as bars, the same as the API answers; for expressions, the photo on a
canvas with a box drawn around each face the API found; the service's own error message for a
file that is not an image. Screenshots go to ``artifacts/`` (git-ignored) as test artefacts.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import require_tool, serve_models
from playwright.sync_api import Browser, Page, sync_playwright

from training.assets import fetch

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
BOX_COLOUR = (255, 212, 0)  # app.js draws boxes in #ffd400


@pytest.fixture(scope="module")
def url(shipped_repository: Callable[..., Path]) -> Iterator[str]:
    models = shipped_repository("imagenet-mobilenetv2", "fer-minixception", "face-mtcnn")
    with serve_models(models) as (_, address):
        yield address


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_tool(CHROMIUM, "apt-get install -y chromium chromium-driver")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Browser, url: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 1400})
    page = context.new_page()
    page.goto(url + "/")
    page.wait_for_selector('#status[data-state="ready"]', timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    yield page
    context.close()


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def _bars(page: Page) -> list[tuple[str, float]]:
    return page.eval_on_selector_all(
        "#results > .bar",
        "items => items.map(i => [i.dataset.label, Number(i.dataset.score)])")


def test_models_listed_without_the_detector(page: Page) -> None:
    options = page.eval_on_selector_all("#model option", "o => o.map(x => x.value)")
    assert {"imagenet-mobilenetv2", "fer-minixception"} <= set(options)
    assert "face-mtcnn" not in options  # a detector cannot be picked on its own


def test_classify_a_photo_shows_the_top_classes_as_bars(page: Page, url: str) -> None:
    photo = fetch("chelsea")
    page.select_option("#model", "imagenet-mobilenetv2")
    page.fill("#top-k", "5")
    page.set_input_files("#file", str(photo))
    page.click("#submit")
    page.wait_for_selector("#results > .bar")
    bars = _bars(page)
    api = httpx.post(f"{url}/v1/models/imagenet-mobilenetv2/classify", params={"top_k": 5},
                     files={"file": (photo.name, photo.read_bytes())}).json()
    expected = api["results"][0]["predictions"]
    assert [label for label, _ in bars] == [p["label"] for p in expected]
    assert [score for _, score in bars] == pytest.approx([p["score"] for p in expected])
    assert bars[0][0] in CATS
    widths = page.eval_on_selector_all(
        "#results .bar-fill", "f => f.map(e => e.getBoundingClientRect().width)")
    assert widths == sorted(widths, reverse=True) and widths[0] > 2 * widths[-1]
    summary = page.inner_text("#summary")
    assert bars[0][0] in summary and "imagenet-mobilenetv2" in summary
    assert page.is_hidden("#error")
    _screenshot(page, "web-page-classify.png")


def test_expressions_draw_a_box_on_each_face(page: Page, url: str) -> None:
    photo = fetch("multi-face")
    page.select_option("#model", "fer-minixception")
    page.set_input_files("#file", str(photo))
    page.click("#submit")
    page.wait_for_selector("#overlay[data-faces]", state="visible")
    api = httpx.post(f"{url}/v1/expressions", params={"model": "fer-minixception"},
                     files={"file": (photo.name, photo.read_bytes())}).json()
    faces = api["faces"]
    assert page.get_attribute("#overlay", "data-faces") == str(len(faces)) == "5"
    shown = [label.removeprefix(f"face {i}: ") for i, (label, _) in enumerate(_bars(page), 1)]
    assert shown == [face["expression"] for face in faces]
    size = page.eval_on_selector("#overlay", "c => [c.width, c.height]")
    assert size == [api["image"]["width"], api["image"]["height"]]
    for face in faces:  # the middle of each box's left edge is painted in the box colour
        box = face["box"]
        pixel = page.eval_on_selector(
            "#overlay", "(c, [x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1)"
            ".data.slice(0, 3))", [box["x"], box["y"] + box["height"] // 2])
        assert pixel == list(BOX_COLOUR), (box, pixel)
    assert faces[0]["expression"] in page.inner_text("#summary")
    _screenshot(page, "web-page-expressions.png")


def test_dropped_photo_is_classified(page: Page) -> None:
    data = base64.b64encode(fetch("chelsea").read_bytes()).decode()
    page.select_option("#model", "imagenet-mobilenetv2")
    transfer = page.evaluate_handle(
        """data => {
             const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
             const transfer = new DataTransfer();
             transfer.items.add(new File([bytes], "chelsea.png", { type: "image/png" }));
             return transfer;
           }""", data)
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    assert page.is_visible("#preview")
    page.click("#submit")
    page.wait_for_selector("#results > .bar")
    assert _bars(page)[0][0] in CATS


def test_service_error_is_shown_in_its_words(page: Page) -> None:
    page.select_option("#model", "imagenet-mobilenetv2")
    page.set_input_files("#file", {"name": "holiday.png", "mimeType": "image/png",
                                   "buffer": b"this is not a PNG at all"})
    page.click("#submit")
    page.wait_for_selector("#error", state="visible")
    message = page.inner_text("#error")
    assert "not a decodable image" in message
    assert page.eval_on_selector_all("#results > .bar", "b => b.length") == 0
    _screenshot(page, "web-page-error.png")
