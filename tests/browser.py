"""Headless Chromium for the page's end-to-end tests: Debian's ``chromium`` driven by ``playwright``.

Nothing downloads a browser: playwright is pointed at the system executable
(``FACTORY_INSPECT_CHROMIUM``, default ``/usr/bin/chromium``; ``.ci/run`` installs it). Without
it (or without the playwright package) the tests fail on CI (``CI=true``) and skip elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("FACTORY_INSPECT_CHROMIUM", "/usr/bin/chromium"))
# Headless on a closed network: without the background-networking switches Chromium's own
# connections (updates, sync, field trials) are refused and slow every start.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXPECT_TIMEOUT_MS = 60_000  # a bound for a wedged page on a busy machine, never a measurement


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing: pip install -e '.[test]'"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM}: apt-get install chromium (or set FACTORY_INSPECT_CHROMIUM)"
    return None


def require_browser() -> None:
    """Fail on CI, skip elsewhere, when the browser cannot run."""
    problem = missing_browser()
    if problem is None:
        return
    if on_ci():
        pytest.fail(f"browser tests cannot run on CI: {problem}")
    pytest.skip(problem)


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (a playwright ``Browser``), closed on exit."""
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def new_page(browser, width: int = 1400, height: int = 1250) -> Iterator[object]:
    """A page in a fresh context that collects its uncaught JavaScript errors in ``page.js_errors``."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.js_errors = []
    page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
