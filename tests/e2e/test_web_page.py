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

import chromium
import httpx
import pytest
from conftest import REPO_ROOT, SHIPPED_MODELS, serve_models
from playwright.sync_api import Browser, Page, Route

from training.assets import fetch

SAMPLES = REPO_ROOT / "samples"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
BOX_COLOUR = (255, 212, 0)  # app.js draws boxes in #ffd400


@pytest.fixture(scope="module")
def url(shipped_repository: Callable[..., Path]) -> Iterator[str]:
    models = shipped_repository("imagenet-mobilenetv2", "imagenet-mobilenetv2-int8",
                                "fer-minixception", "face-mtcnn", "face-retinaface",
                                "fashion-simple-cnn")
    # mnist-lenet5 with two versions, version 1 pinned as the default (as shipped)
    lenet = models / "mnist-lenet5"
    lenet.mkdir()
    for version in ("1", "2"):
        (lenet / version).symlink_to(SHIPPED_MODELS / "mnist-lenet5" / "1", True)
    (lenet / "default_version").write_text("1\n")
    with serve_models(models) as (_, address):
        yield address


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium.launch() as browser:
        yield browser


@pytest.fixture()
def page(browser: Browser, url: str) -> Iterator[Page]:
    with chromium.open_page(browser, url, height=1400) as page:
        yield page


def _screenshot(page: Page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


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


def test_starts_on_an_imagenet_classifier_with_the_choices_grouped(page: Page) -> None:
    assert page.input_value("#model") == "imagenet-mobilenetv2"
    groups = page.eval_on_selector_all(
        "#model optgroup", "gs => gs.map(g => [g.label, Array.from(g.children, o => o.value)])")
    assert groups == [
        ["Photos: ImageNet's 1,000 classes", ["imagenet-mobilenetv2",
                                              "imagenet-mobilenetv2-int8"]],
        ["Faces: expressions", ["fer-minixception"]],
        ["Digits and clothes: small grey images", ["fashion-simple-cnn", "mnist-lenet5"]],
    ]
    texts = page.eval_on_selector_all("#model option", "o => o.map(x => x.text)")
    assert "imagenet-mobilenetv2-int8 (int8: faster on a CPU)" in texts  # with its float model
    page.select_option("#model", "mnist-lenet5")
    hint = page.inner_text("#model-info")
    assert "trained on MNIST" in hint and "28x28 grey" in hint and "handwritten digit" in hint
    page.select_option("#model", "fashion-simple-cnn")
    assert "garment or shoe" in page.inner_text("#model-info")


def test_a_version_can_be_chosen_and_the_default_is_marked(page: Page) -> None:
    page.select_option("#model", "mnist-lenet5")
    options = page.eval_on_selector_all("#version option", "o => o.map(x => [x.value, x.text])")
    assert options == [["2", "v2"], ["1", "v1 (default)"]]
    assert page.input_value("#version") == "1"
    page.set_input_files("#file", str(SAMPLES / "digit.png"))
    page.click("#submit")
    page.wait_for_selector("#results > .bar")
    assert page.inner_text("#summary") == "mnist-lenet5 v1: 7"
    page.select_option("#version", "2")
    page.click("#submit")
    page.wait_for_function("document.querySelector('#summary').textContent.includes('v2')")
    assert page.inner_text("#summary") == "mnist-lenet5 v2: 7"
    page.select_option("#model", "imagenet-mobilenetv2")  # its only version, the default
    assert page.eval_on_selector_all("#version option", "o => o.map(x => x.text)") == [
        "v1 (default)"]
    _screenshot(page, "web-page-version.png")


def test_a_refused_file_clears_the_previous_photo(page: Page) -> None:
    page.set_input_files("#file", str(SAMPLES / "cat.jpg"))
    page.wait_for_selector("#preview", state="visible")  # an <img> has no size until it loads
    assert page.is_enabled("#submit")
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain",
                                   "buffer": b"not a photo"})
    assert "notes.txt is not an image" in page.inner_text("#error")
    assert page.is_hidden("#preview") and page.get_attribute("#preview", "src") is None
    assert page.is_disabled("#submit")  # Run cannot classify the old photo again
    _screenshot(page, "web-page-refused.png")


def test_page_loads_without_a_failed_request(browser: Browser, url: str) -> None:
    context = browser.new_context()
    page = context.new_page()
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400
            else None)
    page.goto(url + "/")
    page.wait_for_selector('#status[data-state="ready"]', timeout=30_000)
    icon = page.get_attribute("link[rel=icon]", "href")
    assert icon is not None
    answer = httpx.get(url + icon)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/svg+xml"
    page.wait_for_timeout(500)  # the browser fetches the icon after the page
    assert failed == []
    context.close()


@pytest.mark.parametrize(("path", "rendered"), [
    ("/docs", ".opblock-summary-path"),  # Swagger UI: one row per operation
    ("/redoc", "h2:has-text('Detect faces and classify their expressions')"),  # ReDoc
])
def test_docs_pages_render_with_the_network_blocked(browser: Browser, url: str, path: str,
                                                     rendered: str) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 1400})
    blocked: list[str] = []

    def only_this_host(route: Route) -> None:
        if route.request.url.startswith(url):
            route.continue_()
        else:  # an air-gapped host: nothing else answers
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_host)
    page = context.new_page()
    page.goto(url + path)
    page.wait_for_selector(rendered, timeout=30_000)
    if path == "/docs":
        paths = page.eval_on_selector_all(".opblock-summary-path", "p => p.map(e => e.textContent)")
        assert "/v1/models/{name}/classify" in " ".join(paths) and len(paths) > 10
    # Nothing else is asked of another host except ReDoc's "powered by" logo in the side bar,
    # a picture the page shows fine without.
    assert [u for u in blocked if u != "https://cdn.redoc.ly/redoc/logo-mini.svg"] == []
    _screenshot(page, f"docs{path.replace('/', '-')}.png", full_page=False)
    context.close()


KEY = "page-key-5e1f"


def test_a_service_with_a_key_gets_it_asked_for_and_the_error_goes(
        browser: Browser, shipped_repository: Callable[..., Path]) -> None:
    """With CONVSERVE_API_KEY the page opens its key field and says, in its own words, what to
    do; once the key is entered the models are listed and the message is gone."""
    models = shipped_repository("mnist-lenet5")
    with serve_models(models, CONVSERVE_API_KEY=KEY) as (_, address):
        context = browser.new_context(viewport={"width": 1000, "height": 1000})
        try:
            page = context.new_page()
            page.goto(address + "/")
            page.wait_for_selector("#error", state="visible", timeout=30_000)
            assert page.inner_text("#error") == ("This service needs an API key: enter it in "
                                                 "the API key field below.")
            assert page.eval_on_selector("#api-key-box", "d => d.open") is True
            _screenshot(page, "web-page-api-key.png")
            page.fill("#api-key", KEY)
            page.dispatch_event("#api-key", "change")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            assert page.is_hidden("#error")
            assert page.eval_on_selector_all("#model option", "o => o.map(x => x.value)") == [
                "mnist-lenet5"]
        finally:
            context.close()
