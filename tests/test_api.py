"""API tests with the app factory: happy paths, metrics, broken artifacts, reload, auth, batching, back-pressure."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.jobs.fit import fit
from model.runtime.imageio import decode_image
from model.runtime.inspector import Inspector
from service.app import create_app
from service.settings import Settings
from tests.conftest import tiny_config, wait_until
from tests.promtext import label_values, metric_value, sample_names

LOOPBACK = ("127.0.0.1", 50000)


# -- helpers ----------------------------------------------------------------------------------


def make_client(root: Path, client: tuple[str, int] = LOOPBACK, raise_server_exceptions: bool = True,
                **settings) -> TestClient:
    """A TestClient (use as a context manager: runs the lifespan) on a fresh app."""
    app = create_app(Settings(artifacts=root, torch_threads=1, **settings))
    return TestClient(app, client=client, raise_server_exceptions=raise_server_exceptions)


def copy_root(src: Path, dst: Path) -> Path:
    """Copy an artifacts root, keeping the relative ``<category> -> .versions/...`` links."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def tamper(root: Path, category: str, name: str = "backbone.safetensors") -> None:
    """Flip one byte of a published artifact file (the hash check must catch it)."""
    path = (root / category).resolve() / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_images(data: Path) -> list[Path]:
    """Good and defective test images of the tiny category, defects first."""
    return sorted((data / "test").rglob("*.png"), key=lambda p: (p.parent.name == "good", p.name))


test_images.__test__ = False  # a helper, not a test


def png_bytes(path: Path, size: tuple[int, int] | None = None) -> bytes:
    """The file's bytes, or the image resized to ``size`` (width, height) and re-encoded."""
    if size is None:
        return path.read_bytes()
    img = Image.open(path).convert("RGB").resize(size)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def decode_png_b64(text: str) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)
    assert arr is not None
    return arr


class Gate:
    """Holds inspect calls (in the worker thread) until the test releases them.

    ``entered`` is set when the first call arrives; ``blocked`` counts calls waiting now.
    A call never released within ``timeout`` s raises (and sets ``timed_out``), so a test
    that fails cannot leave the worker stuck.
    """

    def __init__(self, timeout: float = 120.0) -> None:
        self.entered = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.blocked = 0
        self.timed_out = False
        self.timeout = timeout

    def wait(self) -> None:
        with self._lock:
            self.blocked += 1
        self.entered.set()
        try:
            if not self._released.wait(self.timeout):
                self.timed_out = True
                raise RuntimeError(f"test gate not released within {self.timeout} s")
        finally:
            with self._lock:
                self.blocked -= 1

    def release(self) -> None:
        self._released.set()


@contextmanager
def gated(client: TestClient, category: str) -> Iterator[Gate]:
    """Make ``category``'s inspect calls wait at a ``Gate`` (released at the latest on exit)."""
    inspector = client.app.state.registry.get(category).inspector
    original = inspector.inspect
    gate = Gate()

    def gated_inspect(images, threshold=None):
        gate.wait()
        return original(images, threshold)

    inspector.inspect = gated_inspect
    try:
        yield gate
    finally:
        gate.release()


def queue_depth(client: TestClient, category: str) -> float:
    return metric_value(client.get("/metrics").text, "inspect_queue_depth", category=category)


def post_file(client: TestClient, category: str, data: bytes, **params):
    return client.post(f"/inspect/{category}", files={"file": ("part.png", data, "image/png")}, params=params)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """This module's torch work (fits, library scoring) runs on one thread (see conftest)."""


@pytest.fixture(scope="module")
def client(one_torch_thread, request):
    # Looked up here, not as an argument, so that a first fit runs with one thread too.
    with make_client(request.getfixturevalue("tiny_artifacts")) as c:
        yield c


@pytest.fixture(scope="module")
def images(tiny_data) -> list[Path]:
    return test_images(tiny_data)


# -- happy paths ------------------------------------------------------------------------------


def test_single_file_maps_at_input_resolution(client, images):
    data = png_bytes(images[0], size=(96, 80))
    r = post_file(client, "alpha", data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["category"] == "alpha" and body["filename"] == "part.png"
    assert (body["width"], body["height"]) == (96, 80)
    assert body["request_id"] == r.headers["X-Request-ID"]
    assert body["artifact_id"].startswith("alpha-")
    assert body["is_anomalous"] == (body["score"] > body["threshold"])
    assert 0.0 <= body["normalized_score"] <= 1.0
    assert decode_png_b64(body["heatmap"]).shape == (80, 96, 3)
    mask = decode_png_b64(body["mask"])
    assert mask.shape == (80, 96) and set(np.unique(mask)) <= {0, 255}
    assert body["overlay"] is None
    for region in body["regions"]:
        assert 0 <= region["x"] < 96 and 0 <= region["y"] < 80
        assert region["x"] + region["width"] <= 96 and region["y"] + region["height"] <= 80
        assert region["peak"] > body["pixel_threshold"]
    for stage in ("read", "decode", "queue", "features", "inference", "encode", "total"):
        assert body["timings_ms"][stage] >= 0
    assert body["batch_size"] >= 1


def test_several_files_answer_a_batch_result(client, images):
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images[:3]]
    r = client.post("/inspect/beta", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 3 and len(body["results"]) == 3
    assert [res["filename"] for res in body["results"]] == [p.name for p in images[:3]]
    assert all(res["request_id"] == body["request_id"] for res in body["results"])
    assert body["artifact_id"].startswith("beta-")
    assert {"read", "decode", "queue", "encode", "total"} <= set(body["timings_ms"])


def test_raw_image_body(client, images):
    r = client.post("/inspect/alpha", content=images[0].read_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (128, 128)


def test_scores_equal_the_library_path(client, images, tiny_artifacts):
    inspector = Inspector.from_artifact(tiny_artifacts / "alpha")
    for path in (images[0], images[-1]):
        data = path.read_bytes()
        expected = inspector.inspect([decode_image(data)])[0]
        served = post_file(client, "alpha", data, outputs="none").json()
        assert served["score"] == pytest.approx(expected.score, rel=1e-4)
        assert served["threshold"] == pytest.approx(expected.threshold)
        assert served["is_anomalous"] == expected.verdict().is_anomalous


def test_threshold_override_flips_the_verdict(client, images):
    data = images[0].read_bytes()
    score = post_file(client, "alpha", data, outputs="none").json()["score"]
    low = post_file(client, "alpha", data, outputs="none", threshold=score / 2).json()
    high = post_file(client, "alpha", data, outputs="none", threshold=score * 2).json()
    assert low["is_anomalous"] and low["threshold"] == pytest.approx(score / 2) and low["normalized_score"] > 0.5
    assert not high["is_anomalous"] and high["normalized_score"] < 0.5
    assert low["score"] == pytest.approx(high["score"], rel=1e-6)


def test_pixel_threshold_override_moves_the_mask_only(client, images):
    data = images[-1].read_bytes()
    plain = post_file(client, "alpha", data, outputs="mask").json()
    top = post_file(client, "alpha", data, outputs="mask", pixel_threshold=plain["heatmap_max"] * 100).json()
    low = post_file(client, "alpha", data, outputs="mask", pixel_threshold=plain["pixel_threshold"] / 100).json()
    assert top["pixel_threshold"] == pytest.approx(plain["heatmap_max"] * 100)
    assert not decode_png_b64(top["mask"]).any() and top["regions"] == []
    assert decode_png_b64(low["mask"]).sum() > decode_png_b64(plain["mask"]).sum()
    assert top["is_anomalous"] == low["is_anomalous"] == plain["is_anomalous"] and top["score"] == plain["score"]
    for bad in (0, -1, "nan", "inf"):
        refused = post_file(client, "alpha", data, outputs="none", pixel_threshold=bad)
        assert refused.status_code == 422, bad


def test_outputs_select_the_images(client, images):
    data = png_bytes(images[0], size=(72, 40))
    none = post_file(client, "alpha", data, outputs="none").json()
    assert none["heatmap"] is None and none["mask"] is None and none["overlay"] is None
    only = post_file(client, "alpha", data, outputs="overlay").json()
    assert only["heatmap"] is None and only["mask"] is None
    assert decode_png_b64(only["overlay"]).shape == (40, 72, 3)
    bad = post_file(client, "alpha", data, outputs="heatmap,fireworks")
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_parameter"


def test_heatmap_colours_use_a_fixed_range(client, images):
    """The same map value gives the same colour in every image: a flat black image and a
    textured one share the [0, 2 x threshold] scale, so neither is stretched to full range."""
    black = io.BytesIO()
    Image.new("RGB", (64, 64)).save(black, "PNG")
    heat = decode_png_b64(post_file(client, "alpha", black.getvalue()).json()["heatmap"])
    assert heat.shape == (64, 64, 3)
    # A self-normalised map would span the whole colour map; a fixed range does not have to.
    assert len(np.unique(heat.reshape(-1, 3), axis=0)) < 64 * 64


def test_openapi_documents_the_models(client):
    schema = client.get("/openapi.json").json()
    assert {"ImageResult", "BatchResult", "ErrorBody", "CategoryDetail"} <= set(schema["components"]["schemas"])
    assert "/inspect/{category}" in schema["paths"]


# -- categories, health, metrics --------------------------------------------------------------


def test_categories_health_and_readiness(client):
    cats = client.get("/categories").json()["categories"]
    assert [(c["name"], c["state"]) for c in cats] == [("alpha", "ready"), ("beta", "ready")]
    detail = client.get("/categories/alpha").json()
    manifest = detail["manifest"]
    assert detail["artifact_id"].startswith("alpha-") and detail["state"] == "ready"
    assert manifest["backbone_arch"] == "tf_efficientnet_lite0" and manifest["image_size"] == 64
    assert manifest["blocks"] == {"nns": True, "gaussian": True, "psg": False, "fusion": False, "head": False}
    assert manifest["thresholds"]["image"] > 0 and manifest["bank_size"] > 0
    assert manifest["training_images"] == 12 and manifest["created_at"]
    assert manifest["labelled_defects"] == 0 and manifest["validation"] is None
    assert client.get("/categories/gamma").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert set(ready.json()["categories"]) == {"alpha", "beta"}


def test_metrics_count_requests(client, images):
    before = client.get("/metrics").text
    assert post_file(client, "beta", images[0].read_bytes(), outputs="none").status_code == 200
    assert client.post("/inspect/beta").status_code == 422
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    names = sample_names(text)
    for name in ("inspect_requests_total", "inspect_images_total", "inspect_request_duration_seconds_bucket",
                 "inspect_stage_duration_seconds_bucket", "inspect_batch_size_bucket", "inspect_in_flight",
                 "inspect_verdicts_total", "inspect_model_loaded", "inspect_gpu_memory_bytes",
                 "inspect_queue_depth"):
        assert name in names, name
    for labels, delta in (({"category": "beta", "status": "200"}, 1), ({"category": "beta", "status": "422"}, 1)):
        assert metric_value(text, "inspect_requests_total", **labels) == \
            metric_value(before, "inspect_requests_total", **labels) + delta
    assert metric_value(text, "inspect_images_total", category="beta") == \
        metric_value(before, "inspect_images_total", category="beta") + 1
    assert metric_value(text, "inspect_in_flight") == 0
    assert metric_value(text, "inspect_model_loaded", category="alpha") == 1
    # An unknown category name never becomes a label of its own.
    client.post("/inspect/no-such-thing")
    assert "no-such-thing" not in label_values(client.get("/metrics").text, "category")


def test_request_id_is_echoed(client):
    r = client.get("/categories/gamma", headers={"X-Request-ID": "line-7.cam-2"})
    assert r.headers["X-Request-ID"] == "line-7.cam-2" and r.json()["request_id"] == "line-7.cam-2"
    r = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["X-Request-ID"] != "bad id with spaces"


# -- broken artifacts and reload --------------------------------------------------------------


def test_broken_artifact_fails_only_its_category(tiny_artifacts, images, tmp_path):
    root = copy_root(tiny_artifacts, tmp_path / "artifacts")
    tamper(root, "alpha")
    with make_client(root) as c:
        r = post_file(c, "alpha", images[0].read_bytes())
        assert r.status_code == 503 and r.json()["code"] == "artifact_unavailable"
        assert "SHA-256" in r.json()["error"] and str(tmp_path) not in r.json()["error"]
        assert post_file(c, "beta", images[0].read_bytes()).status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["categories"]["alpha"]["state"] == "failed"
        assert ready.json()["categories"]["alpha"]["error"]
        states = {x["name"]: x["state"] for x in c.get("/categories").json()["categories"]}
        assert states == {"alpha": "failed", "beta": "ready"}
        assert metric_value(c.get("/metrics").text, "inspect_model_loaded", category="alpha") == 0


def test_not_ready_when_nothing_serves(tiny_artifacts, tmp_path):
    root = copy_root(tiny_artifacts, tmp_path / "artifacts")
    tamper(root, "alpha")
    (root / "beta").resolve().joinpath("memory_bank.safetensors").unlink()
    with make_client(root) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        assert c.get("/healthz").status_code == 200
    with make_client(tmp_path / "missing-root") as c:
        assert c.get("/readyz").status_code == 503 and c.get("/categories").json() == {"categories": []}


def test_reload_swaps_in_a_new_artifact_and_keeps_the_old_on_failure(tiny_artifacts, tiny_data, images, tmp_path):
    root = copy_root(tiny_artifacts, tmp_path / "artifacts")
    data = images[0].read_bytes()
    with make_client(root) as c:
        old = c.get("/categories/alpha").json()["artifact_id"]
        fit(tiny_data, "alpha", root, tiny_config(seed=5))
        r = c.post("/categories/alpha/reload")
        assert r.status_code == 200, r.text
        new = r.json()["artifact_id"]
        assert new != old and r.json()["previous_artifact_id"] == old
        assert c.get("/categories/alpha").json()["artifact_id"] == new
        assert post_file(c, "alpha", data).json()["artifact_id"] == new

        fit(tiny_data, "alpha", root, tiny_config(seed=6))
        tamper(root, "alpha", "memory_bank.safetensors")
        r = c.post("/categories/alpha/reload")
        assert r.status_code == 409 and r.json()["code"] == "reload_failed"
        assert new in r.json()["error"]
        served = post_file(c, "alpha", data)
        assert served.status_code == 200 and served.json()["artifact_id"] == new
        detail = c.get("/categories/alpha").json()
        assert detail["state"] == "ready" and detail["artifact_id"] == new and detail["error"]
        assert c.post("/categories/gamma/reload").json()["code"] == "unknown_category"


def test_reload_is_loopback_only_without_a_key(tiny_artifacts):
    with make_client(tiny_artifacts, client=("10.1.2.3", 40000)) as c:
        r = c.post("/categories/alpha/reload")
        assert r.status_code == 403 and r.json()["code"] == "forbidden"


def test_reload_needs_the_key_when_configured(tiny_artifacts):
    with make_client(tiny_artifacts, client=("10.1.2.3", 40000), api_key="s3cret") as c:
        assert c.post("/categories/alpha/reload").status_code == 401
        ok = c.post("/categories/alpha/reload", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["artifact_id"] == ok.json()["previous_artifact_id"]


# -- auth -------------------------------------------------------------------------------------


def test_api_key_guards_inspect_when_set(tiny_artifacts, images):
    data = images[0].read_bytes()
    with make_client(tiny_artifacts, api_key="s3cret") as c:
        r = post_file(c, "alpha", data)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"
        wrong = c.post("/inspect/alpha", files={"file": ("a.png", data, "image/png")},
                       headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = c.post("/inspect/alpha", files={"file": ("a.png", data, "image/png")},
                    headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/categories").status_code == 200


def test_no_key_needed_by_default(client, images):
    assert post_file(client, "alpha", images[0].read_bytes(), outputs="none").status_code == 200


# -- batching, overload, deadline, internal errors ---------------------------------------------


def test_concurrent_requests_are_batched(tiny_artifacts, images):
    data = images[0].read_bytes()
    with (make_client(tiny_artifacts, max_wait_ms=50, max_batch_size=8) as c, ThreadPoolExecutor(6) as pool,
          gated(c, "alpha") as gate):
        futures = [pool.submit(post_file, c, "alpha", data, outputs="none") for _ in range(6)]
        # The first batch holds the worker until all six images are admitted: they pile up.
        assert gate.entered.wait(60), "no batch reached inference"
        wait_until(lambda: queue_depth(c, "alpha") == 6, lambda: f"6 images admitted (now {queue_depth(c, 'alpha')})")
        gate.release()
        responses = [f.result(timeout=60) for f in futures]
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        sizes = [r.json()["batch_size"] for r in responses]
        assert max(sizes) > 1, sizes
        scores = {round(r.json()["score"], 3) for r in responses}
        assert len(scores) == 1  # batching does not change a score
        text = c.get("/metrics").text
        batches = metric_value(text, "inspect_batch_size_count")
        # The warm-up is not counted; the held batch and at most one more with everything that piled up.
        assert 1 <= batches <= 2, sizes
        assert metric_value(text, "inspect_batch_size_sum") >= 6
        assert not gate.timed_out


def test_overload_answers_503_with_retry_after(tiny_artifacts, images):
    data = images[0].read_bytes()
    with (make_client(tiny_artifacts, max_queue=1, retry_after_s=2) as c, ThreadPoolExecutor(2) as pool,
          gated(c, "alpha") as gate):
        batcher = c.app.state.registry.get("alpha").batcher
        first = pool.submit(post_file, c, "alpha", data)
        assert gate.entered.wait(60), "the first request never reached inference"
        # Answered while the first request's batch is still held: it did not wait for room.
        r = pool.submit(post_file, c, "alpha", data).result(timeout=60)
        assert gate.blocked == 1 and not first.done()
        assert r.status_code == 503 and r.json()["code"] == "overloaded"
        assert r.headers["Retry-After"] == "2"
        gate.release()
        assert first.result(timeout=60).status_code == 200
        assert not gate.timed_out
        assert batcher.admitted == 0
        assert post_file(c, "beta", data).status_code == 200  # other categories have their own queue


def test_deadline_answers_504_and_leaks_nothing(tiny_artifacts, images):
    data = images[0].read_bytes()
    # The deadline only has to outlast reading and decoding one small image: inference is held.
    with make_client(tiny_artifacts, request_timeout_s=2.0) as c, gated(c, "alpha") as gate:
        r = post_file(c, "alpha", data)
        assert r.status_code == 504 and r.json()["code"] == "deadline_exceeded"
        # Its batch is still held in inference, and nothing of the request is left counted.
        assert gate.blocked == 1
        text = c.get("/metrics").text
        assert metric_value(text, "inspect_in_flight") == 0
        assert metric_value(text, "inspect_queue_depth", category="alpha") == 0
        assert metric_value(text, "inspect_requests_total", category="alpha", status="504") == 1
        assert c.app.state.registry.get("alpha").batcher.admitted == 0
        gate.release()
        assert post_file(c, "alpha", data, outputs="none").status_code == 200  # the worker goes on
        assert not gate.timed_out


def test_disconnected_client_frees_its_slot(tiny_artifacts, images):
    """A client that hangs up while its batch runs is answered 499 at once; nothing leaks."""
    data = images[0].read_bytes()
    sent: list[dict] = []
    blocked_when_answered: list[int] = []

    with make_client(tiny_artifacts) as c, gated(c, "alpha") as gate:

        async def hang_up_during_inference(app) -> None:
            messages = [{"type": "http.request", "body": data, "more_body": False}]

            async def receive() -> dict:
                if messages:
                    return messages.pop(0)
                await asyncio.to_thread(gate.entered.wait, 60)  # hang up once its batch is in inference
                return {"type": "http.disconnect"}

            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    blocked_when_answered.append(gate.blocked)
                sent.append(message)

            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                "scheme": "http", "path": "/inspect/alpha", "raw_path": b"/inspect/alpha", "query_string": b"",
                "root_path": "", "client": ("127.0.0.1", 1), "server": ("testserver", 80),
                "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(data)).encode())],
            }
            await app(scope, receive, send)

        c.portal.call(hang_up_during_inference, c.app)
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
        assert blocked_when_answered == [1]  # answered while its batch was held: did not wait for it
        text = c.get("/metrics").text
        assert metric_value(text, "inspect_in_flight") == 0
        assert metric_value(text, "inspect_queue_depth", category="alpha") == 0
        assert metric_value(text, "inspect_requests_total", category="alpha", status="499") == 1
        assert gate.blocked == 1  # all of the above while the batch is still held
        gate.release()
        assert not gate.timed_out


def test_non_finite_scores_never_reach_json(tiny_artifacts, images):
    with make_client(tiny_artifacts) as c:
        inspector = c.app.state.registry.get("alpha").inspector
        original = inspector.inspect

        def nan_inspect(images, threshold=None):
            results = original(images, threshold)
            for res in results:
                res.score = math.nan
                res.anomaly_map[:] = np.nan
            return results

        inspector.inspect = nan_inspect
        r = post_file(c, "alpha", images[0].read_bytes())
        assert r.status_code == 500
        assert r.json() == {"error": "internal server error", "code": "internal_error",
                            "request_id": r.headers["X-Request-ID"]}
        assert "NaN" not in r.text


def test_unexpected_exceptions_become_internal_error(tiny_artifacts, images):
    with make_client(tiny_artifacts, raise_server_exceptions=False) as c:
        inspector = c.app.state.registry.get("alpha").inspector

        def broken(images, threshold=None):
            raise RuntimeError("secret internals /etc/passwd")

        inspector.inspect = broken
        r = post_file(c, "alpha", images[0].read_bytes())
        assert r.status_code == 500 and r.json()["code"] == "internal_error"
        assert "secret" not in r.text and "Traceback" not in r.text
        assert r.json()["request_id"] == r.headers["X-Request-ID"]
        assert metric_value(c.get("/metrics").text, "inspect_in_flight") == 0
        # The batcher survived: the next batch works again.
        del inspector.inspect
        assert post_file(c, "alpha", images[0].read_bytes()).status_code == 200


def test_lifespan_restores_torch_threads(tiny_artifacts):
    import torch

    def in_new_thread() -> int:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(torch.get_num_threads).result()

    before = in_new_thread()
    app = create_app(Settings(artifacts=tiny_artifacts, torch_threads=1, inference_workers=2))
    with TestClient(app, client=LOOPBACK):
        executor = app.state.registry.executor
        assert {executor.submit(torch.get_num_threads).result() for _ in range(4)} == {1}
    assert in_new_thread() == before


def test_threads_do_not_leak(tiny_artifacts):
    before = threading.active_count()
    with make_client(tiny_artifacts) as c:
        assert c.get("/readyz").status_code == 200
    wait_until(lambda: threading.active_count() <= before,
               lambda: f"threads back to {before} (now {threading.active_count()}: {threading.enumerate()})")


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FACTORY_INSPECT_MAX_QUEUE", "3")
    monkeypatch.setenv("FACTORY_INSPECT_API_KEY", "from-env")
    monkeypatch.setenv("FACTORY_INSPECT_ARTIFACTS", str(tmp_path))
    settings = Settings(device="cpu")
    assert settings.max_queue == 3 and settings.artifacts == tmp_path
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)
    assert Settings(artifacts="elsewhere").artifacts == Path("elsewhere")  # arguments win


def test_errors_are_counted_by_code(client):
    client.post("/inspect/alpha", content=b"not an image", headers={"Content-Type": "image/png"})
    text = client.get("/metrics").text
    assert metric_value(text, "inspect_errors_total", category="alpha", code="invalid_image") >= 1
