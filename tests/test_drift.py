"""Score drift: the tracker's window and statistics, the scrape-time gauges, and the API over a
tiny fitted category whose good images are then served brighter."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import numpy as np
import pydantic
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.jobs.fit import fit
from model.serving import read_manifest
from service.app import create_app
from service.drift import MIN_SCORES, Baseline, DriftTracker
from service.metrics import Metrics
from service.settings import Settings
from tests.conftest import tiny_config
from tests.promtext import samples

BASE = Baseline("art-1", holdout_median=10.0, threshold=15.0, expected_false_alarm_rate=0.01)
RATIO, RATE = "inspect_score_drift_ratio", "inspect_recent_anomaly_rate"


def tracked(scores: list[float], window: int = 256, baseline: Baseline = BASE) -> DriftTracker:
    tracker = DriftTracker(window, baseline)
    tracker.record(scores, baseline.artifact_id)
    return tracker


# -- the tracker ------------------------------------------------------------------------------


def test_the_window_keeps_the_most_recent_scores_only() -> None:
    tracker = tracked([100.0] * 20 + [10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0], window=8)
    snap = tracker.snapshot()
    assert snap.window == 8 and snap.count == 8
    assert snap.recent_median == 13.5 and snap.ratio == 1.35
    assert snap.recent_anomaly_rate == 2 / 8  # 16 and 17 are above 15; the twenty 100s left the window


def test_too_few_scores_give_no_statistics() -> None:
    snap = tracked([50.0] * (MIN_SCORES - 1)).snapshot()
    assert snap.status == "insufficient_data" and snap.count == MIN_SCORES - 1
    assert snap.recent_median is None and snap.ratio is None and snap.recent_anomaly_rate is None
    assert snap.holdout_median == 10.0 and snap.threshold == 15.0 and snap.expected_false_alarm_rate == 0.01


@pytest.mark.parametrize("score, status", [(10.0, "ok"), (12.0, "ok"), (13.0, "watch"), (15.0, "watch"),
                                           (16.0, "drift")])
def test_the_ratio_cut_offs(score, status) -> None:
    snap = tracked([score] * 10).snapshot()
    assert snap.ratio == pytest.approx(score / 10.0) and snap.status == status
    if status != "ok":
        assert f"{score / 10:.2f}x" in snap.hint and "lighting" in snap.hint and "update the model" in snap.hint


def test_the_median_ignores_a_minority_of_defects() -> None:
    snap = tracked([10.0] * 8 + [500.0, 900.0]).snapshot()
    assert snap.recent_median == 10.0 and snap.ratio == 1.0
    assert snap.recent_anomaly_rate == 0.2
    assert snap.status == "ok"  # two flagged parts: fewer than MIN_ALARMS never judge by the rate


@pytest.mark.parametrize("flagged, status", [(2, "ok"), (3, "watch"), (5, "watch"), (6, "drift")])
def test_the_rate_cut_offs_against_the_expected_false_alarm_rate(flagged, status) -> None:
    snap = tracked([10.0] * (100 - flagged) + [40.0] * flagged).snapshot()
    assert snap.ratio == 1.0 and snap.recent_anomaly_rate == pytest.approx(flagged / 100)
    assert snap.status == status
    if status != "ok":
        assert "flagged parts" in snap.hint


def test_reset_starts_a_fresh_window_and_drops_the_previous_artifacts_scores() -> None:
    tracker = tracked([30.0] * 12)
    assert tracker.snapshot().status == "drift"
    tracker.reset(Baseline("art-2", holdout_median=20.0, threshold=40.0, expected_false_alarm_rate=0.01))
    snap = tracker.snapshot()
    assert snap.count == 0 and snap.status == "insufficient_data" and snap.holdout_median == 20.0
    tracker.record([30.0] * 12, "art-1")  # a batch that ran on the old artifact across the reload
    assert tracker.snapshot().count == 0
    tracker.record([30.0] * 12, "art-2")
    snap = tracker.snapshot()
    assert snap.count == 12 and snap.ratio == 1.5 and snap.status == "watch"


def test_no_ratio_without_a_positive_held_out_median() -> None:
    snap = tracked([5.0] * 10, baseline=Baseline("a", holdout_median=0.0, threshold=15.0,
                                                  expected_false_alarm_rate=0.01)).snapshot()
    assert snap.ratio is None and snap.recent_anomaly_rate == 0.0 and snap.status == "ok"


def test_the_window_is_at_least_the_minimum() -> None:
    with pytest.raises(ValueError):
        DriftTracker(MIN_SCORES - 1)
    with pytest.raises(pydantic.ValidationError):
        Settings(drift_window=MIN_SCORES - 1)
    assert Settings().drift_window == 256 and DriftTracker(MIN_SCORES).window == MIN_SCORES


def test_the_gauges_are_computed_at_scrape_time_and_absent_below_the_minimum() -> None:
    trackers = {"full": tracked([12.0] * 9 + [20.0]), "short": tracked([12.0] * 3)}
    metrics = Metrics()
    metrics.track_drift(lambda: [(name, t.snapshot()) for name, t in trackers.items()])
    text = metrics.render()[0].decode()
    assert gauges(text, RATIO) == {"full": 1.2} and gauges(text, RATE) == {"full": 0.1}
    trackers["full"].record([30.0] * 10, "art-1")  # no scrape in between: nothing is computed on record
    assert gauges(metrics.render()[0].decode(), RATIO) == {"full": 2.5}  # median of 9x12, 20, 10x30 = 25


# -- the API ----------------------------------------------------------------------------------


def gauges(text: str, name: str) -> dict[str, float]:
    """category -> value of gauge ``name`` (categories without a sample are absent)."""
    return {s.labels["category"]: s.value for s in samples(text) if s.name == name}


def brighter(path: Path, factor: float) -> bytes:
    """The image with every channel multiplied by ``factor`` (clipped), as PNG."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb * factor, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def serve(client: TestClient, pngs: list[bytes]) -> None:
    for png in pngs:  # one part per request, as on a line
        r = client.post("/inspect/alpha", files={"file": ("part.png", png, "image/png")}, params={"outputs": "none"})
        assert r.status_code == 200, r.text


def drift_of(client: TestClient, category: str = "alpha") -> dict:
    r = client.get(f"/categories/{category}")
    assert r.status_code == 200, r.text
    return r.json()["drift"]


@pytest.fixture
def root(tiny_artifacts, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_artifacts, tmp_path / "arts", symlinks=True))


def test_brighter_good_parts_raise_the_ratio_on_get_and_on_metrics(root, tiny_data) -> None:
    goods = sorted((tiny_data / "test" / "good").glob("*.png"))
    normal = [p.read_bytes() for p in goods] * 2  # 8 scores: the window below is full
    # Measured on this random-init model: x1.4 brightness multiplies the good parts' median score by ~50.
    bright = [brighter(p, 1.4) for p in goods] * 2
    with TestClient(create_app(Settings(artifacts=root, torch_threads=1, drift_window=MIN_SCORES)),
                    client=("127.0.0.1", 50000)) as client:
        fresh = drift_of(client)
        assert fresh["status"] == "insufficient_data" and fresh["count"] == 0 and fresh["window"] == MIN_SCORES
        manifest = read_manifest(root / "alpha")
        assert fresh["holdout_median"] == manifest.calibration.holdout_scores["p50"]
        assert fresh["threshold"] == manifest.calibration.thresholds.image
        assert fresh["expected_false_alarm_rate"] == manifest.config.calibration.image_false_alarm_rate

        serve(client, normal[:4])
        assert drift_of(client)["count"] == 4 and drift_of(client)["ratio"] is None
        assert RATIO not in {s.name for s in samples(client.get("/metrics").text)}

        serve(client, normal[4:])
        before = drift_of(client)
        text = client.get("/metrics").text
        assert before["count"] == MIN_SCORES and before["status"] != "insufficient_data"
        assert math.isfinite(before["ratio"]) and before["ratio"] > 0
        assert gauges(text, RATIO) == {"alpha": pytest.approx(before["ratio"])}  # beta served nothing
        assert gauges(text, RATE) == {"alpha": pytest.approx(before["recent_anomaly_rate"])}

        serve(client, bright)
        after = drift_of(client)
        text = client.get("/metrics").text
        assert after["count"] == MIN_SCORES  # the window is bounded: the normal scores left it
        assert after["ratio"] > 2 * before["ratio"] and after["ratio"] > 1.5
        assert after["status"] == "drift" and "lighting" in after["hint"]
        assert gauges(text, RATIO)["alpha"] == pytest.approx(after["ratio"])
        assert after["recent_anomaly_rate"] > before["recent_anomaly_rate"]
        assert gauges(text, RATE)["alpha"] == pytest.approx(after["recent_anomaly_rate"])
        assert drift_of(client, "beta")["count"] == 0


def test_a_reload_starts_a_fresh_window_on_the_new_baseline(root, tiny_data) -> None:
    goods = [p.read_bytes() for p in sorted((tiny_data / "test" / "good").glob("*.png"))] * 3
    with TestClient(create_app(Settings(artifacts=root, torch_threads=1)), client=("127.0.0.1", 50000)) as client:
        serve(client, goods)
        assert drift_of(client)["count"] == len(goods) and "alpha" in gauges(client.get("/metrics").text, RATIO)
        fit(tiny_data, "alpha", root, tiny_config(seed=7))  # a re-fit published over the served one
        new = read_manifest(root / "alpha")
        r = client.post("/categories/alpha/reload")
        assert r.status_code == 200 and r.json()["artifact_id"] == new.artifact_id, r.text
        drift = drift_of(client)
        assert drift["count"] == 0 and drift["status"] == "insufficient_data" and drift["ratio"] is None
        assert drift["holdout_median"] == new.calibration.holdout_scores["p50"]
        text = client.get("/metrics").text
        assert "alpha" not in gauges(text, RATIO) and "alpha" not in gauges(text, RATE)
        serve(client, goods)
        assert drift_of(client)["count"] == len(goods)


def test_a_category_that_does_not_serve_has_no_drift(root) -> None:
    (root / "alpha").resolve().joinpath("memory_bank.safetensors").write_bytes(b"broken")
    with TestClient(create_app(Settings(artifacts=root, torch_threads=1))) as client:
        body = client.get("/categories/alpha").json()
        assert body["state"] == "failed" and body["drift"] is None
        assert drift_of(client, "beta")["status"] == "insufficient_data"
