"""The one inspect pipeline (``service.pipeline``) behind ``POST /inspect`` and OIP v2 ``infer``:
admission before decoding, the same verdict, and the same metrics, drift and recent list."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.promtext import metric_value
from tests.test_api import gated, make_client, post_file, test_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def infer_bytes(client, category: str, *encoded: bytes):
    data = [base64.b64encode(e).decode() for e in encoded]
    body = {"inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}]}
    return client.post(f"/v2/models/{category}/infer", json=body)


@pytest.mark.parametrize("api", ["inspect", "v2"])
def test_a_full_queue_refuses_before_decoding(tiny_artifacts, tiny_data, api):
    """Bytes that do not decode are refused as overload while the queue is full: admission comes
    before decoding, for both APIs, and is given back after."""
    good = test_images(tiny_data)[0].read_bytes()
    corrupt = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    send = (lambda c, data: post_file(c, "alpha", data)) if api == "inspect" else (
        lambda c, data: infer_bytes(c, "alpha", data))
    with (make_client(tiny_artifacts, max_queue=1) as c, ThreadPoolExecutor(1) as pool, gated(c, "alpha") as gate):
        first = pool.submit(send, c, good)
        assert gate.entered.wait(60), "the first request never reached inference"
        r = send(c, corrupt)
        assert r.status_code == 503 and r.json()["code"] == "overloaded", r.text
        gate.release()
        assert first.result(timeout=60).status_code == 200
        assert c.app.state.registry.get("alpha").batcher.admitted == 0
        r = send(c, corrupt)  # with room, the same bytes reach the decoder
        assert r.status_code in (400, 415) and r.json()["code"] in ("invalid_image", "unsupported_format"), r.text


def test_both_apis_count_drift_and_recent_the_same_way(tiny_artifacts, tiny_data):
    png = test_images(tiny_data)[0].read_bytes()
    with make_client(tiny_artifacts) as c:
        inspected = post_file(c, "alpha", png, outputs="none").json()
        r = infer_bytes(c, "alpha", png)
        assert r.status_code == 200, r.text
        text = c.get("/metrics").text
        assert metric_value(text, "inspect_images_total", category="alpha") == 2
        verdict = "defect" if inspected["is_anomalous"] else "good"
        assert metric_value(text, "inspect_verdicts_total", category="alpha", verdict=verdict) == 2
        assert metric_value(text, "inspect_stage_duration_seconds_count", stage="encode") == 2
        assert c.get("/categories/alpha").json()["drift"]["count"] == 2
        items = c.get("/categories/alpha/recent").json()["items"]
        assert len(items) == 2
        assert items[0]["score"] == pytest.approx(items[1]["score"], rel=1e-6)
        assert items[1]["request_id"] == inspected["request_id"]
        assert items[0]["request_id"] == r.headers["X-Request-ID"] != inspected["request_id"]


def test_the_colour_range_is_the_verdicts(tiny_artifacts, tiny_data):
    """``heatmap_max`` comes from the verdict: 2 x the calibrated image threshold, whatever the
    request's threshold override."""
    png = test_images(tiny_data)[0].read_bytes()
    with make_client(tiny_artifacts) as c:
        plain = post_file(c, "alpha", png, outputs="none").json()
        overridden = post_file(c, "alpha", png, outputs="none", threshold=plain["threshold"] * 3).json()
        assert plain["heatmap_max"] == pytest.approx(2 * plain["threshold"])
        assert overridden["heatmap_max"] == plain["heatmap_max"]
        assert overridden["threshold"] == pytest.approx(3 * plain["threshold"])
