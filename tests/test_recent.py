"""The recent inspections behind the page's recent panel: the bounded ring, its disk store, the
``GET /categories/{name}/recent`` endpoint, ``record=false`` what-if re-asks, and the ``map``
output the page colours itself."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from service.recent import RecentInspections
from service.recent_entry import THUMBNAIL_PX, RecentEntry, thumbnail
from service.recent_store import RecentStore
from service.settings import Settings
from tests.promtext import metric_value
from tests.test_api import decode_png_b64, make_client, post_file, test_images


def inspected(i: int, anomalous: bool = True, size: tuple[int, int] = (40, 40)) -> RecentEntry:
    """The entry of an inspected image of ``size``: what ``RecentEntry.of`` reads of its verdict."""
    verdict = SimpleNamespace(score=float(i), threshold=2.5, is_anomalous=anomalous, regions=[object()] * (i % 3))
    return RecentEntry.of(datetime.now(timezone.utc), image(*size), verdict, f"part{i}.png", "a-1", f"r{i}")


def entry(i: int) -> RecentEntry:
    return RecentEntry(datetime(2026, 11, 29, 8, 0, i, tzinfo=timezone.utc), f"part{i}.png", float(i), 2.5,
                       True, 1, "a-1", f"r{i}", thumbnail(np.full((20, 30, 3), i, np.uint8)))


def image(height: int = 300, width: int = 200) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


# -- the ring ---------------------------------------------------------------------------------


def test_a_thumbnail_is_a_small_jpeg_of_the_image():
    data = thumbnail(image(300, 200))
    small = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert data[:2] == b"\xff\xd8" and small.shape == (THUMBNAIL_PX, 64, 3)
    assert cv2.imdecode(np.frombuffer(thumbnail(image(10, 12)), np.uint8), cv2.IMREAD_COLOR).shape == (10, 12, 3)


def test_the_ring_keeps_the_last_n_newest_first():
    recent = RecentInspections("bottle", 3)
    for i in range(5):
        recent.record([inspected(i)])
    assert len(recent) == 3
    assert [e.request_id for e in recent.latest()] == ["r4", "r3", "r2"]
    assert [e.filename for e in recent.latest(2)] == ["part4.png", "part3.png"]
    assert recent.latest()[0].regions == 1 and recent.latest()[0].score == 4.0


def test_a_limit_of_zero_keeps_nothing():
    recent = RecentInspections("bottle", 0)
    recent.record([inspected(1)])
    assert not recent.enabled and recent.latest() == []


def test_concurrent_records_keep_the_bound():
    recent = RecentInspections("bottle", 10)
    start = threading.Barrier(4)

    def work(k: int) -> None:
        start.wait()
        for i in range(25):
            recent.record([inspected(100 * k + i, size=(30, 30))])
            recent.latest(3)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(recent) == 10 and len({e.request_id for e in recent.latest()}) == 10


# -- the disk store ---------------------------------------------------------------------------


def test_the_store_keeps_at_most_its_limit_on_disk(tmp_path):
    store = RecentStore(tmp_path, limit=3)
    store.write("bottle", [entry(i) for i in range(5)])
    folder = tmp_path / "bottle"
    assert len(list(folder.glob("*.json"))) == 3 and len(list(folder.glob("*.jpg"))) == 3
    assert [e.request_id for e in store.load("bottle", 10)] == ["r2", "r3", "r4"]
    fields = json.loads(sorted(folder.glob("*.json"))[-1].read_text())
    assert fields["filename"] == "part4.png" and fields["time"].startswith("2026-11-29T08:00:04")


def test_a_new_process_restores_the_newest_and_keeps_the_bound(tmp_path):
    RecentStore(tmp_path, limit=4).write("bottle", [entry(i) for i in range(4)])
    store = RecentStore(tmp_path, limit=4)
    recent = RecentInspections("bottle", 2, store)
    recent.restore()
    assert [e.request_id for e in recent.latest()] == ["r3", "r2"]
    assert recent.latest()[0].thumbnail == entry(3).thumbnail
    recent.record([inspected(9, size=(20, 20))])
    names = sorted(p.stem for p in (tmp_path / "bottle").glob("*.json"))
    assert len(names) == 4
    assert json.loads((tmp_path / "bottle" / f"{names[-1]}.json").read_text())["request_id"] == "r9"


def test_an_unreadable_entry_is_skipped(tmp_path, caplog):
    store = RecentStore(tmp_path, limit=5)
    store.write("bottle", [entry(1), entry(2)])
    sorted((tmp_path / "bottle").glob("*.json"))[0].write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="service.recent_store"):
        assert [e.request_id for e in RecentStore(tmp_path, limit=5).load("bottle", 5)] == ["r2"]
    assert "skipping" in caplog.text


def test_an_empty_recent_dir_setting_is_off(monkeypatch):
    monkeypatch.setenv("FACTORY_INSPECT_RECENT_DIR", "")
    assert Settings().recent_dir is None
    with pytest.raises(ValueError):
        Settings(recent_per_category=-1)


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """This module's torch work runs on one thread (see conftest)."""


@pytest.fixture(scope="module")
def images(tiny_data) -> list[Path]:
    return test_images(tiny_data)


def recent_of(client, category: str = "alpha", **params) -> dict:
    r = client.get(f"/categories/{category}/recent", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_inspection_is_listed_with_its_thumbnail(tiny_artifacts, images):
    with make_client(tiny_artifacts, recent_per_category=4) as client:
        assert recent_of(client) == {"category": "alpha", "limit": 4, "items": []}
        body = post_file(client, "alpha", images[0].read_bytes()).json()
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images[1:6]]
        assert client.post("/inspect/alpha", files=files).status_code == 200
        listed = recent_of(client)["items"]
        assert [i["filename"] for i in listed] == [p.name for p in reversed(images[2:6])]
        assert recent_of(client, "beta")["items"] == []
        first = recent_of(client, limit=1)["items"]
        assert len(first) == 1 and first[0]["filename"] == images[5].name
    with make_client(tiny_artifacts) as client:  # a new server: an empty list, then this image alone
        post_file(client, "alpha", images[0].read_bytes())
        (item,) = recent_of(client)["items"]
        assert item["score"] == pytest.approx(body["score"]) and item["is_anomalous"] == body["is_anomalous"]
        assert item["threshold"] == pytest.approx(body["threshold"]) and item["request_id"] != body["request_id"]
        assert item["regions"] == len(body["regions"]) and item["filename"] == "part.png"
        thumb = decode_png_b64(item["thumbnail"])  # any format cv2 reads: a JPEG here
        assert thumb.shape == (THUMBNAIL_PX, THUMBNAIL_PX, 3)
        assert datetime.fromisoformat(item["time"]).tzinfo is not None


def test_a_what_if_re_ask_is_not_recorded(tiny_artifacts, images):
    with make_client(tiny_artifacts) as client:
        data = images[0].read_bytes()
        score = post_file(client, "alpha", data, outputs="none").json()["score"]
        before = client.get("/metrics").text
        r = post_file(client, "alpha", data, outputs="mask", threshold=score * 2, record="false")
        assert r.status_code == 200 and not r.json()["is_anomalous"] and r.json()["mask"]
        after = client.get("/metrics").text
        assert len(recent_of(client)["items"]) == 1
        assert client.get("/categories/alpha").json()["drift"]["count"] == 1
        verdicts = [metric_value(t, "inspect_verdicts_total", category="alpha", verdict=v)
                    for t in (before, after) for v in ("good", "defect")]
        assert verdicts[:2] == verdicts[2:]  # the defect rate is the line's, not the slider's
        assert metric_value(after, "inspect_images_total", category="alpha") == 2


def test_recording_never_fails_an_inspection(tiny_artifacts, images, caplog):
    with make_client(tiny_artifacts) as client:
        recent = client.app.state.registry.get("alpha").recent

        def broken(entries):
            raise OSError("disk full")

        recent.record = broken
        with caplog.at_level(logging.ERROR, logger="service.pipeline"):
            r = post_file(client, "alpha", images[0].read_bytes(), outputs="none")
        assert r.status_code == 200, r.text
        assert "not recorded" in caplog.text and "disk full" in caplog.text


def test_recent_is_off_at_zero_and_needs_the_key_when_one_is_set(tiny_artifacts, images):
    with make_client(tiny_artifacts, recent_per_category=0) as client:
        assert post_file(client, "alpha", images[0].read_bytes(), outputs="none").status_code == 200
        assert recent_of(client) == {"category": "alpha", "limit": 0, "items": []}
    with make_client(tiny_artifacts, api_key="k3y") as client:
        r = client.get("/categories/alpha/recent")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        ok = client.get("/categories/alpha/recent", headers={"Authorization": "Bearer k3y"})
        assert ok.status_code == 200
        assert client.get("/categories/nope/recent", headers={"Authorization": "Bearer k3y"}).status_code == 404
        assert client.get("/categories/alpha/recent", params={"limit": 0},
                          headers={"Authorization": "Bearer k3y"}).status_code == 422


def test_the_disk_store_outlives_a_restart(tiny_artifacts, images, tmp_path):
    settings = {"recent_per_category": 3, "recent_dir": tmp_path / "shift", "recent_dir_per_category": 5}
    with make_client(tiny_artifacts, **settings) as client:
        for path in images[:7]:
            post_file(client, "alpha", path.read_bytes(), outputs="none")
    assert len(list((tmp_path / "shift" / "alpha").glob("*.json"))) == 5
    with make_client(tiny_artifacts, **settings) as client:
        items = recent_of(client)["items"]
        assert len(items) == 3 and all(i["filename"] == "part.png" for i in items)


def test_the_map_output_is_the_anomaly_map_in_gray_over_the_heatmap_range(tiny_artifacts, images):
    with make_client(tiny_artifacts) as client:
        body = post_file(client, "alpha", images[0].read_bytes(), outputs="map").json()
        thresholds = client.get("/categories/alpha").json()["manifest"]["thresholds"]
        with_override = post_file(client, "alpha", images[0].read_bytes(), outputs="none", threshold=1.0).json()
    assert body["heatmap"] is None and body["mask"] is None
    gray = decode_png_b64(body["map"])
    assert gray.shape == (body["height"], body["width"]) and gray.dtype == np.uint8
    assert body["heatmap_max"] == pytest.approx(2 * thresholds["image"])
    assert with_override["heatmap_max"] == pytest.approx(body["heatmap_max"])  # fixed per artifact
    expected_top = round(255 * min(1.0, body["score"] / body["heatmap_max"]))
    assert abs(int(gray.max()) - expected_top) <= 3  # the map's maximum is the score (resized: about)


def test_the_category_detail_has_the_held_out_scores(tiny_artifacts):
    with make_client(tiny_artifacts) as client:
        held_out = client.get("/categories/alpha").json()["manifest"]["holdout_scores"]
    assert held_out["count"] >= 3 and held_out["min"] <= held_out["p50"] <= held_out["max"]
