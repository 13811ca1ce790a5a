"""The line teaches the model over HTTP (issue 35): confirmations, the background update, rollback,
lineage, and each bad input and fault (a clear error, nothing lost)."""

from __future__ import annotations

import errno
import io
import os
import signal
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.artifact.store import TEST_PAUSE_ENV, load_artifact, read_manifest
from model.jobs.fit import fit
from service.app import create_app
from service.settings import Settings
from tests.conftest import tiny_config, wait_until
from tests.servers import running_server
from tests.test_update import UPDATABLE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def root(tmp_path, tiny_data) -> Path:
    fit(tiny_data, "cat", tmp_path / "arts", tiny_config(**UPDATABLE))
    return tmp_path / "arts"


def local(app) -> TestClient:
    """A client on loopback (the POSTs here need loopback or the reload key)."""
    return TestClient(app, client=("127.0.0.1", 50000))


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def sample_images(tiny_data) -> list[bytes]:
    return [p.read_bytes() for p in sorted((tiny_data / "test").rglob("*.png"))]


def inspect(client, data: bytes) -> str:
    r = client.post("/inspect/cat", files={"file": ("part.png", data, "image/png")}, params={"outputs": "none"})
    assert r.status_code == 200, r.text
    return r.json()["request_id"]


def confirm(client, label="good", files=None, **fields):
    return client.post("/categories/cat/feedback", data={"label": label, **fields}, files=files or None)


def wait_for_update(client) -> dict:
    def finished():
        job = client.get("/categories/cat/update").json()
        return job if job["state"] != "running" else None
    return wait_until(finished, "the update to finish", timeout=300)


def test_a_confirmed_false_alarm_is_kept_on_disk_learned_by_an_update_and_rolled_back(root, tiny_data):
    images = sample_images(tiny_data)
    first = read_manifest(root / "cat").artifact_id
    with local(create_app(Settings(artifacts=root))) as client:
        ids = [inspect(client, data) for data in images[:3]]
        r = confirm(client, request_id=ids[0])
        assert r.status_code == 200 and r.json()["pending"] == 1, r.text
        assert confirm(client, request_id=ids[0]).json()["code"] == "duplicate"  # the same image again: 409
        box = confirm(client, "defect", request_id=ids[1], defect_type="scratch", box="10,10,60,40")
        assert box.status_code == 200 and box.json()["added"][0]["has_mask"], box.text
    # A restart loses nothing: the confirmations are on disk.
    with local(create_app(Settings(artifacts=root))) as client:
        pending = client.get("/categories/cat/feedback").json()
        assert pending["pending"] == 2 and {i["label"] for i in pending["items"]} == {"good", "defect"}
        assert client.post("/categories/cat/rollback").json()["code"] == "no_parent"
        started = client.post("/categories/cat/update")
        assert started.status_code == 202 and started.json()["confirmations"] == 2, started.text
        assert client.post("/categories/cat/update").json()["code"] in ("update_running", "nothing_to_learn")
        job = wait_for_update(client)
        assert job["state"] == "done" and job["parent"] == first, job
        assert client.get("/categories/cat").json()["artifact_id"] == job["artifact_id"] != first
        assert client.get("/categories/cat/feedback").json()["pending"] == 0
        versions = client.get("/categories/cat/versions").json()
        assert [v["artifact_id"] for v in versions] == [job["artifact_id"], first]
        assert versions[0]["added_goods"] == 1 and versions[0]["added_defects"] == 1
        learned = confirm(client, files={"file": ("again.png", images[0], "image/png")})  # as inspected: same pixels
        assert learned.json()["code"] == "duplicate" and "learned" in learned.json()["error"]
        back = client.post("/categories/cat/rollback")
        assert back.status_code == 200 and back.json()["artifact_id"] == first, back.text
        assert client.get("/categories/cat").json()["artifact_id"] == first
        assert client.post("/inspect/cat", files={"file": ("p.png", images[0], "image/png")}).status_code == 200


def test_bad_confirmations_get_clear_errors_and_store_nothing(root, tiny_data):
    with local(create_app(Settings(artifacts=root))) as client:
        assert confirm(client, request_id="no-such-request").json()["code"] == "unknown_request"
        other_size = png(np.zeros((40, 50, 3), np.uint8))
        r = confirm(client, files={"file": ("small.png", other_size, "image/png")})
        assert r.status_code == 422 and r.json()["code"] == "image_size_mismatch" and "50x40" in r.json()["error"]
        r = confirm(client, files={"file": ("notes.txt", b"not an image at all", "text/plain")})
        assert r.status_code in (400, 415) and r.json()["code"] in ("invalid_image", "unsupported_format")
        assert confirm(client, "maybe", request_id="x").json()["code"] == "invalid_label"
        assert confirm(client).status_code == 422  # neither a request id nor a file
        image = sample_images(tiny_data)[0]
        assert confirm(client, "good", files={"file": ("a.png", image, "image/png")},
                       box="1,1,5,5").status_code == 422  # a good part has no box
        assert confirm(client, "defect", files={"file": ("a.png", image, "image/png")},
                       box="5,5,1,1").json()["code"] == "invalid_box"
        assert client.post("/categories/cat/update").json()["code"] == "nothing_to_learn"
        assert client.get("/categories/cat/feedback").json()["pending"] == 0


def test_a_full_disk_answers_507_and_leaves_nothing_half_written(root, tiny_data, monkeypatch):
    import service.feedback as feedback

    def full(path, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[: len(data) // 2])  # a partial write, as a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(feedback, "_write", full)
    with local(create_app(Settings(artifacts=root))) as client:
        r = confirm(client, files={"file": ("a.png", sample_images(tiny_data)[0], "image/png")})
        assert r.status_code == 507 and r.json()["code"] == "insufficient_storage", r.text
        monkeypatch.undo()
        assert client.get("/categories/cat/feedback").json()["pending"] == 0
        assert not [p for p in (root / ".feedback").rglob("*") if p.is_file()]


def test_an_unwritable_feedback_folder_answers_503_not_500(root, tiny_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with local(create_app(Settings(artifacts=root, feedback_dir=blocker / "feedback"))) as client:
        r = confirm(client, files={"file": ("a.png", sample_images(tiny_data)[0], "image/png")})
        assert r.status_code == 503 and r.json()["code"] == "feedback_unwritable", r.text


def test_the_store_is_bounded(root, tiny_data):
    with local(create_app(Settings(artifacts=root, feedback_per_category=1))) as client:
        images = sample_images(tiny_data)
        assert confirm(client, files={"file": ("a.png", images[0], "image/png")}).status_code == 200
        r = confirm(client, files={"file": ("b.png", images[1], "image/png")})
        assert r.status_code == 409 and r.json()["code"] == "feedback_full"


def test_the_three_posts_need_the_reload_key(root, tiny_data):
    settings = Settings(artifacts=root, api_key="secret")
    with local(create_app(settings)) as client:
        image = sample_images(tiny_data)[0]
        assert confirm(client, files={"file": ("a.png", image, "image/png")}).status_code == 401
        assert client.post("/categories/cat/update").status_code == 401
        assert client.post("/categories/cat/rollback").status_code == 401
        ok = client.post("/categories/cat/feedback", data={"label": "good"},
                         files={"file": ("a.png", image, "image/png")}, headers={"Authorization": "Bearer secret"})
        assert ok.status_code == 200, ok.text


def test_an_update_is_refused_while_the_category_reloads(root, tiny_data):
    with local(create_app(Settings(artifacts=root))) as client:
        confirm(client, files={"file": ("a.png", sample_images(tiny_data)[0], "image/png")})
        category = client.app.state.registry.get("cat")

        class Held:
            def locked(self) -> bool:
                return True

        real, category.lock = category.lock, Held()
        try:
            r = client.post("/categories/cat/update")
        finally:
            category.lock = real
        assert r.status_code == 409 and r.json()["code"] == "reload_running"
        assert client.get("/categories/cat/feedback").json()["pending"] == 1  # nothing lost


def test_an_update_killed_midway_fails_cleanly_and_the_live_version_keeps_serving(root, tiny_data, tmp_path,
                                                                                  monkeypatch):
    marker = tmp_path / "paused"
    monkeypatch.setenv(TEST_PAUSE_ENV, f"before_swap:{marker}")  # the update's child process inherits it
    live = read_manifest(root / "cat").artifact_id
    with local(create_app(Settings(artifacts=root))) as client:
        image = sample_images(tiny_data)[0]
        confirm(client, files={"file": ("a.png", image, "image/png")})
        assert client.post("/categories/cat/update").status_code == 202
        wait_until(marker.exists, "the update to reach the swap", timeout=300)
        os.kill(client.app.state.updates._procs["cat"].pid, signal.SIGKILL)
        job = wait_for_update(client)
        assert job["state"] == "failed" and "signal 9" in job["error"], job
        assert client.get("/categories/cat").json()["artifact_id"] == live
        assert client.post("/inspect/cat", files={"file": ("p.png", image, "image/png")}).status_code == 200
        assert client.get("/categories/cat/feedback").json()["pending"] == 1  # still waits for the next update
    assert load_artifact(root / "cat").artifact_id == live


def test_inspection_goes_on_without_a_failed_request_through_an_update_and_a_rollback(root, tiny_data, tmp_path):
    """A real server under a steady stream of inspections from two clients while an update is learned,
    swapped in, and rolled back."""
    images = sample_images(tiny_data)
    with running_server(root, tmp_path / "server.log") as server:
        failures, answered, stop = [], [], threading.Event()

        def inspect_forever(seed: int) -> None:
            with httpx.Client(base_url=server.base, timeout=60) as c:
                i = seed
                while not stop.is_set():
                    r = c.post("/inspect/cat", files={"file": ("p.png", images[i % len(images)], "image/png")},
                               params={"outputs": "none"})
                    (answered if r.status_code == 200 else failures).append((r.status_code, r.text[:200]))
                    i += 1

        workers = [threading.Thread(target=inspect_forever, args=(s,)) for s in (0, 1)]
        for w in workers:
            w.start()
        try:
            with httpx.Client(base_url=server.base, timeout=60) as c:
                first = c.get("/categories/cat").json()["artifact_id"]
                r = c.post("/categories/cat/feedback", data={"label": "good"},
                           files={"file": ("a.png", images[0], "image/png")})
                assert r.status_code == 200, r.text
                assert c.post("/categories/cat/update").status_code == 202
                job = wait_for_update(c)
                assert job["state"] == "done", job
                assert c.post("/categories/cat/rollback").json()["artifact_id"] == first
                seen = len(answered)
                wait_until(lambda: len(answered) > seen + 4, "inspections after the rollback")
        finally:
            stop.set()
            for w in workers:
                w.join()
    assert failures == [] and len(answered) > 10, failures[:5]


def test_a_version_published_elsewhere_is_picked_up_by_polling(root, tiny_data, tmp_path):
    """What every cluster replica does (reload_poll_s): an update or rollback made by another process
    is served without a reload call."""
    from model.artifact.source import rollback
    from model.jobs.dataset import list_images
    from model.jobs.demo_data import generate_category
    from model.jobs.update import update

    goods = list_images(generate_category(tmp_path / "more", kind="tiles", n_train=4, n_test_good=1,
                                          n_test_defect=1, size=128, seed=9) / "train" / "good")
    with local(create_app(Settings(artifacts=root, reload_poll_s=0.05))) as client:
        first = client.get("/categories/cat").json()["artifact_id"]
        new = update(root / "cat", goods=goods).artifact_id
        wait_until(lambda: client.get("/categories/cat").json()["artifact_id"] == new, "the poll to load the update")
        rollback(root / "cat")
        wait_until(lambda: client.get("/categories/cat").json()["artifact_id"] == first, "the poll to load the rollback")
