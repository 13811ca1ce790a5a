"""The page end to end in headless Chromium, against the real server on loopback over an artifact
fitted on real bottles, with the API key off and on.

One scenario per server: load the page, upload a real defective bottle, and check what the
operator sees (verdict, score, the overlay, region boxes), the what-if threshold slider, the
recent panel, an upload the server cannot read, and several images at once. Every wait is on
the page (playwright's ``expect``), bounded only against a wedged run. Screenshots go to
``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.browser import chromium, new_page, require_browser
from tests.conftest import REPO, shared_category
from tests.servers import Server, running_server

KEY = "page-test-key"
SCREENSHOTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module", params=["open", "keyed"])
def server(request, tmp_path_factory) -> Iterator[tuple[str, Server]]:
    """The real server over the real bottle artifact; ``keyed``: with ``api_key`` set."""
    require_browser()  # before the fit: fail or skip at once when the browser cannot run
    root = request.getfixturevalue("bottle_artifacts")
    settings = {"api_key": KEY} if request.param == "keyed" else {}
    log = tmp_path_factory.mktemp(f"page-{request.param}") / "server.log"
    with running_server(root, log, settings) as s:
        yield request.param, s


@pytest.fixture
def page(browser, server):
    with new_page(browser) as page:
        yield page


def bottle(defect: str, name: str = "000.png"):
    return shared_category("mvtec_ad", "bottle", "test", defect) / name


def give_the_key(page) -> None:
    """The first protected request (the recent panel) asks for the key: a wrong one is refused
    and asked again, the right one is kept for this tab only."""
    from playwright.sync_api import expect

    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    page.fill("#api-key", "not-the-key")
    page.click("#key-ok")
    expect(page.locator("#key-reason")).to_contain_text("refused")
    expect(dialog).to_be_visible()
    page.fill("#api-key", KEY)
    page.click("#key-ok")
    expect(dialog).to_be_hidden()
    # The key is kept once the refused requests have been answered again (they retry together).
    page.wait_for_function(f"sessionStorage.getItem('factory-inspect.api-key') === {KEY!r}")
    expect(dialog).to_be_hidden()
    assert page.evaluate("localStorage.length") == 0
    expect(page.locator("#forget-key")).to_be_visible()


def canvas_pixels(page) -> dict:
    """Size and contrast of what the view canvas holds (a sample of its red channel)."""
    return page.evaluate("""() => {
        const c = document.getElementById('view');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lo = 255, hi = 0;
        for (let i = 0; i < d.length; i += 4 * 97) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
        return {width: c.width, height: c.height, contrast: hi - lo};
    }""")


def test_the_page_shows_a_real_defect_and_its_what_if_threshold(page, server):
    from playwright.sync_api import expect

    mode, srv = server
    headers = {"Authorization": f"Bearer {KEY}"} if mode == "keyed" else {}
    dialog = page.locator("#key-dialog")
    page.goto(f"{srv.base}/")
    expect(page.locator("#category")).to_have_value("bottle")
    expect(page.locator("#health-summary")).to_contain_text("Ready: 1 of 1 categories serving")
    if mode == "keyed":
        give_the_key(page)
    expect(page.locator("#recent-note")).to_contain_text("last 20 inspections of bottle")
    expect(page.locator("#report-body")).to_contain_text("tf_efficientnet_lite2")
    unlabelled = page.evaluate("[...document.querySelectorAll('input, select')]"
                               ".filter(e => e.labels.length === 0).map(e => e.id)")
    assert unlabelled == []

    # A real broken bottle: verdict, score, the overlay and the region boxes.
    with page.expect_response(lambda r: "/inspect/bottle" in r.url) as answer:
        page.set_input_files("#files", str(bottle("broken_large")))
    assert answer.value.status == 200, answer.value.text()
    result = answer.value.json()
    assert result["is_anomalous"] and result["regions"], result["score"]
    expect(page.locator("#verdict")).to_have_text(re.compile(r"DEFECT"))
    expect(page.locator("#score-line")).to_contain_text(f"Score {round(result['score']):,} > calibrated threshold "
                                                       f"{round(result['threshold']):,}")
    view = page.locator("#view")
    expect(view).to_have_attribute("aria-label", re.compile(r"000\.png; anomaly map at 55 % opacity"))
    shown = view.bounding_box()
    assert shown["width"] > 100 and shown["height"] > 100, shown
    pixels = canvas_pixels(page)
    assert (pixels["width"], pixels["height"]) == (result["width"], result["height"]) and pixels["contrast"] > 50
    boxes = page.locator(".region-box")
    expect(boxes).to_have_count(len(result["regions"]))
    first, region = boxes.first.bounding_box(), result["regions"][0]
    scale = shown["width"] / result["width"]
    assert first["width"] > 0 and first["height"] > 0
    assert abs(first["x"] - shown["x"] - region["x"] * scale) < 3 and abs(first["y"] - shown["y"] - region["y"] * scale) < 3
    expect(page.locator("#legend-caption")).to_contain_text(f"from 0 to {round(result['heatmap_max']):,}")
    expect(page.locator("#regions tbody tr")).to_have_count(len(result["regions"]))
    expect(page.locator("#timings tbody")).to_contain_text("inference")
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"page-{mode}-defect.png")  # what the operator sees first

    # The what-if slider, by keyboard, above the score: the server answers good; the stored
    # threshold stays.
    slider = page.locator("#threshold")
    top = float(slider.get_attribute("max"))
    assert top > result["score"]
    slider.focus()
    with page.expect_response(lambda r: "record=false" in r.url) as what_if:
        page.keyboard.press("End")
    assert what_if.value.status == 200 and f"threshold={slider.get_attribute('max')}" in what_if.value.url
    expect(page.locator("#verdict")).to_have_text(re.compile(r"GOOD"))
    expect(page.locator("#score-line")).to_contain_text("what-if threshold")
    expect(page.locator("#threshold-note")).to_contain_text("The stored threshold is unchanged")
    expect(page.locator(".region-box")).to_have_count(len(result["regions"]))  # the mask did not move
    stored = httpx.get(f"{srv.base}/categories/bottle", timeout=30).json()["manifest"]["thresholds"]
    assert stored["image"] == pytest.approx(result["threshold"])

    # The what-if pixel threshold at its top (above the score, which is the map's maximum for
    # this artifact's image score): no mask, no region box; the stored one stays.
    pixel = page.locator("#pixel-threshold")
    assert float(pixel.get_attribute("max")) > result["score"]
    pixel.focus()
    with page.expect_response(lambda r: "pixel_threshold=" in r.url and "record=false" in r.url) as mask_if:
        page.keyboard.press("End")
    assert mask_if.value.status == 200 and mask_if.value.json()["regions"] == []
    expect(page.locator(".region-box")).to_have_count(0)
    expect(page.locator("#regions tbody")).to_contain_text("no region: the mask is empty")
    expect(page.locator("#pixel-threshold-note")).to_contain_text("The stored pixel threshold is unchanged")
    assert stored["pixel"] == pytest.approx(result["pixel_threshold"])

    # The recent panel lists the inspection once (the what-if re-ask is not recorded).
    items = page.locator("#recent-list .recent-item")
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("DEFECT")
    expect(items.first).to_contain_text("000.png")
    assert items.first.locator("img").evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    recent = httpx.get(f"{srv.base}/categories/bottle/recent", headers=headers, timeout=30).json()
    assert [i["request_id"] for i in recent["items"]] == [result["request_id"]]

    # A text file: the server's refusal, in words, in the alert region.
    page.set_input_files("#files", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a part\n"}])
    errors = page.locator("#errors")
    expect(errors).to_contain_text("not an image the server can read")
    expect(errors).to_contain_text("invalid_image")
    assert errors.get_attribute("role") == "alert"

    # Several images at once: one entry each, and each can be looked at.
    with page.expect_response(lambda r: "/inspect/bottle" in r.url) as answer:
        page.set_input_files("#files", [str(bottle("broken_large")), str(bottle("good", "001.png"))])
    batch = answer.value.json()["results"]
    entries = page.locator("#result-list button")
    expect(entries).to_have_count(2)
    expect(errors).to_be_empty()
    entries.nth(1).click()
    expect(entries.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#score-line")).to_contain_text(f"Score {round(batch[1]['score']):,}")
    expect(items).to_have_count(3)
    page.screenshot(path=SCREENSHOTS / f"page-{mode}-end.png", full_page=True)
    expect(dialog).to_be_hidden()  # the key was asked for once
    assert not page.js_errors
