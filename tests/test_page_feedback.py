"""Teaching the model from the page, end to end in headless Chromium against the real server on
loopback, over a tiny category fitted so that it can be updated (issue 35).

The operator inspects two parts at once, confirms one as good (a false alarm) and boxes a
defect on the other by dragging on its image, sees the waiting confirmations count up, updates
the model and follows the update to its new version in the category report's lineage, then rolls
back to the first version. With an API key and a separate reload key, the first confirmation asks
for the reload key, and confirming the same part twice shows the duplicate in words. Every wait
is on the page (playwright's ``expect``), bounded only against a wedged run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model.artifact.store import read_manifest
from model.jobs.fit import fit
from tests.browser import chromium, new_page, require_browser
from tests.conftest import REPO, tiny_config
from tests.servers import running_server
from tests.test_update import UPDATABLE

API_KEY = "page-api-key"
RELOAD_KEY = "page-reload-key"
SCREENSHOTS = REPO / "test-artifacts"
UPDATE_TIMEOUT_MS = 300_000  # a tiny update takes seconds; a bound for a wedged one on a busy machine


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as b:
        yield b


@pytest.fixture
def root(tmp_path, tiny_data) -> Path:
    """A fresh artifacts root with ``cat`` fitted so that it can be updated (each test changes it)."""
    require_browser()  # before the fit: fail or skip at once when the browser cannot run
    fit(tiny_data, "cat", tmp_path / "arts", tiny_config(**UPDATABLE))
    return tmp_path / "arts"


@pytest.fixture
def page(browser):
    with new_page(browser) as page:
        yield page


def part(tiny_data: Path, folder: str, index: int, name: str) -> dict:
    """A test image of the tiny category under a name of its own (the recent list shows it)."""
    source = sorted((tiny_data / "test" / folder).glob("*.png"))[index]
    return {"name": name, "mimeType": "image/png", "buffer": source.read_bytes()}


def inspect(page, files: list[dict]) -> str:
    """Inspect ``files`` through the page's file input; the request id."""
    with page.expect_response(lambda r: "/inspect/cat" in r.url) as answer:
        page.set_input_files("#files", files=files)
    assert answer.value.status == 200, answer.value.text()
    return answer.value.headers["x-request-id"]


def entry(page, name: str):
    return page.locator("#recent-list .recent-item").filter(has_text=name)


def expect_pending(page, count: int) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#pending")).to_have_attribute("data-count", str(count))
    expect(page.locator("#pending")).to_contain_text(f"{count} confirmation{' waits' if count == 1 else 's wait'}")


def drag_a_box(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag on the defect dialog's image from ``start`` to ``end`` (fractions of the image)."""
    shown = page.locator("#defect-image").bounding_box()
    at = [(shown["x"] + fx * shown["width"], shown["y"] + fy * shown["height"]) for fx, fy in (start, end)]
    page.mouse.move(*at[0])
    page.mouse.down()
    page.mouse.move(*at[1], steps=6)
    page.mouse.up()


def watch_update_texts(page) -> None:
    """Keep every text the update line shows (an update of a tiny model may run for a second only)."""
    page.evaluate("""() => {
        window.updateTexts = [];
        const line = document.getElementById('update-state');
        new MutationObserver(() => window.updateTexts.push(line.textContent))
            .observe(line, {childList: true, characterData: true, subtree: true});
    }""")


def test_the_operator_confirms_parts_updates_the_model_and_rolls_it_back(page, root, tiny_data, tmp_path):
    from playwright.sync_api import expect

    first = read_manifest(root / "cat").artifact_id
    with running_server(root, tmp_path / "server.log") as srv:
        page.goto(f"{srv.base}/")
        expect(page.locator("#category")).to_have_value("cat")
        expect_pending(page, 0)
        expect(page.get_by_role("button", name="Update the model")).to_be_disabled()
        versions = page.locator("#lineage-body .version")
        expect(versions).to_have_count(1)
        expect(versions.first).to_contain_text(f"{first} (live)")
        expect(page.locator("#lineage-body")).to_contain_text("no earlier version to roll back to")
        expect(page.locator("#lineage-body .rollback")).to_have_count(0)

        # Two parts in one request: each recent entry confirms its own image of the batch.
        request_id = inspect(page, [part(tiny_data, "good", 0, "part-a.png"), part(tiny_data, "good", 1, "part-b.png")])
        expect(page.locator("#recent-list .recent-item")).to_have_count(2)
        good = entry(page, "part-b.png")
        good.get_by_role("button", name="Good (false alarm)").click()
        expect_pending(page, 1)
        expect(good.locator(".confirm-note")).to_have_text("✔ confirmed as good")
        expect(page.locator("#errors")).to_be_empty()
        expect(page.get_by_role("button", name="Update the model")).to_be_enabled()

        # A defect, boxed by dragging on the larger view, with its type.
        entry(page, "part-a.png").get_by_role("button", name="Defect").click()
        dialog = page.locator("#defect-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#defect-what")).to_contain_text("part-a.png, 128 x 128 px")
        expect(page.locator("#defect-box-text")).to_contain_text("No box")
        drag_a_box(page, (0.25, 0.25), (0.75, 0.6))
        expect(page.locator("#defect-box")).to_be_visible()
        words = page.locator("#defect-box-text")
        expect(words).to_contain_text("Box: x")
        box = [int(v) for v in re.findall(r"\d+", words.text_content())[:4]]  # x0, x1, y0, y1
        assert all(abs(got - want) <= 1 for got, want in zip(box, (32, 96, 32, 77), strict=True)), box
        page.fill("#defect-type", "scratch")
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "page-feedback-defect.png")
        page.get_by_role("button", name="Send as defect").click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#errors")).to_be_empty()
        expect_pending(page, 2)
        expect(page.locator("#status")).to_contain_text(f"part-a.png confirmed as defect (scratch), box {box[0]}, "
                                                       f"{box[2]}, {box[1]}, {box[3]}")
        items = httpx.get(f"{srv.base}/categories/cat/feedback", timeout=30).json()["items"]
        assert [(i["label"], i["filename"], i["request_id"], i["has_mask"], i["defect_type"]) for i in items] == [
            ("defect", "part-a.png", request_id, True, "scratch"), ("good", "part-b.png", request_id, False, None)]

        # The update: its progress while it runs, then its version, live, in the lineage.
        watch_update_texts(page)
        page.get_by_role("button", name="Update the model").click()
        state = page.locator("#update-state")
        expect(state).to_have_attribute("data-state", "done", timeout=UPDATE_TIMEOUT_MS)
        job = httpx.get(f"{srv.base}/categories/cat/update", timeout=30).json()
        assert job["state"] == "done" and job["parent"] == first and job["artifact_id"] != first, job
        shown = page.evaluate("window.updateTexts")
        assert any(re.fullmatch(r"Updating: \w+ · \d+ s · learning 2 confirmations\.", t) for t in shown), shown
        expect(state).to_contain_text(f"version {job['artifact_id']} is live")
        expect(page.locator("#update-progress")).to_be_hidden()
        expect(versions).to_have_count(2)
        expect(versions.first).to_contain_text(f"{job['artifact_id']} (live)")
        expect(versions.first).to_contain_text(f"Updated from {first}: added 1 confirmed good and 1 confirmed defect")
        expect(versions.nth(1)).to_contain_text(first)
        expect(page.locator("#report-body")).to_contain_text(job["artifact_id"])
        expect_pending(page, 0)
        expect(page.get_by_role("button", name="Update the model")).to_be_disabled()
        page.screenshot(path=SCREENSHOTS / "page-feedback-updated.png", full_page=True)

        # Rollback: the first version is live again and nothing is left to roll back.
        page.get_by_role("button", name=f"Roll back to {first}").click()
        expect(versions).to_have_count(1)
        expect(versions.first).to_contain_text(f"{first} (live)")
        expect(page.locator("#lineage-body .rollback")).to_have_count(0)
        expect(page.locator("#report-body")).to_contain_text(first)
        expect(page.locator("#status")).to_contain_text(f"version {first} is live again")
        assert httpx.get(f"{srv.base}/categories/cat", timeout=30).json()["artifact_id"] == first
        expect(page.locator("#errors")).to_be_empty()
        assert not page.js_errors


def test_confirming_asks_for_the_reload_key_and_a_duplicate_is_explained(page, root, tiny_data, tmp_path):
    from playwright.sync_api import expect

    settings = {"api_key": API_KEY, "reload_key": RELOAD_KEY}
    with running_server(root, tmp_path / "server.log", settings) as srv:
        page.goto(f"{srv.base}/")
        dialog, reason = page.locator("#key-dialog"), page.locator("#key-reason")
        expect(dialog).to_be_visible()  # the recent panel needs the API key
        page.fill("#api-key", API_KEY)
        page.click("#key-ok")
        expect(dialog).to_be_hidden()
        expect(page.locator("#recent-note")).to_contain_text("inspections of cat")
        inspect(page, [part(tiny_data, "good", 0, "part-a.png")])

        # The API key does not change the model here: the page asks for the reload key once.
        confirm = entry(page, "part-a.png").get_by_role("button", name="Good (false alarm)")
        confirm.click()
        expect(dialog).to_be_visible()
        expect(page.locator("#key-title")).to_have_text("Reload key")
        expect(reason).to_contain_text("need the reload key")
        page.fill("#api-key", "not-the-key")
        page.click("#key-ok")
        expect(reason).to_contain_text("refused")
        page.fill("#api-key", RELOAD_KEY)
        page.click("#key-ok")
        expect(dialog).to_be_hidden()
        expect_pending(page, 1)
        keys = page.evaluate("[sessionStorage.getItem('factory-inspect.api-key'), "
                             "sessionStorage.getItem('factory-inspect.reload-key')]")
        assert keys == [API_KEY, RELOAD_KEY]

        # The same part again: refused as a duplicate, in words; nothing more waits.
        confirm.click()
        errors = page.locator("#errors")
        expect(errors).to_contain_text("confirmed already")
        expect(errors).to_contain_text("duplicate")
        expect_pending(page, 1)
        # A cancelled defect sends nothing.
        entry(page, "part-a.png").get_by_role("button", name="Defect").click()
        page.get_by_role("button", name="Cancel").click()
        expect(page.locator("#defect-dialog")).to_be_hidden()
        pending = httpx.get(f"{srv.base}/categories/cat/feedback", timeout=30).json()
        assert pending["pending"] == 1
        expect(dialog).to_be_hidden()  # each key was asked for once
        assert not page.js_errors
