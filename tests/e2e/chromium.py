"""Headless Chromium (Debian's ``/usr/bin/chromium``) for the page tests, driven by Playwright.

The flags keep it off this machine's closed network (no background or component connections).
A missing Chromium skips the test in a bare ``pytest`` and fails it under ``.ci/run``
(:func:`conftest.require_tool`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from conftest import require_tool
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def launch() -> Iterator[Browser]:
    """A headless Chromium for the duration of the block."""
    executable = require_tool(CHROMIUM, "apt-get install -y chromium chromium-driver")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(browser: Browser, url: str, height: int) -> Iterator[Page]:
    """The service's page at ``url`` in a fresh context, once it says it is ready and has
    listed the models."""
    context = browser.new_context(viewport={"width": 1000, "height": height})
    try:
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector('#status[data-state="ready"]', timeout=30_000)
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        yield page
    finally:
        context.close()
