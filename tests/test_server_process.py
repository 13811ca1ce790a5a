"""End to end through a real server process: ``python -m cli.main serve`` under uvicorn."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator

import httpx
import pytest

from model.jobs.fit import fit
from tests.conftest import tiny_config, wait_until
from tests.servers import Server, running_server

BODY_LIMIT = 1_000_000


@pytest.fixture(scope="module")
def server(one_torch_thread, request, tmp_path_factory) -> Iterator[Server]:
    """A served copy of the tiny artifacts root."""
    tiny_artifacts = request.getfixturevalue("tiny_artifacts")
    root = tmp_path_factory.mktemp("served") / "artifacts"
    shutil.copytree(tiny_artifacts, root, symlinks=True)
    with running_server(root, root.parent / "server.log", {"max_body_bytes": BODY_LIMIT}) as server:
        yield server


def test_inspect_over_http(server, tiny_data):
    base = server.base
    image = sorted((tiny_data / "test").rglob("*.png"))[0]
    r = httpx.post(f"{base}/inspect/alpha", files={"file": (image.name, image.read_bytes(), "image/png")},
                   timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["artifact_id"].startswith("alpha-") and body["request_id"] == r.headers["x-request-id"]
    assert (body["width"], body["height"]) == (128, 128)
    assert isinstance(body["score"], float) and body["heatmap"] and body["mask"]
    assert "inspect_requests_total" in httpx.get(f"{base}/metrics").text


def test_streamed_body_over_the_limit_is_cut_off(server):
    base = server.base

    def chunks():
        for _ in range(50):  # 50 x 100 kB = 5x the limit, without a Content-Length
            yield b"\0" * 100_000

    try:
        r = httpx.post(f"{base}/inspect/alpha", content=chunks(), headers={"Content-Type": "image/png"}, timeout=30)
    except httpx.TransportError:
        pytest.skip("the server closed the connection before the client read the 413")
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_sighup_reloads_every_category(server, tiny_data):
    base, root = server.base, server.root
    old = httpx.get(f"{base}/categories/alpha").json()["artifact_id"]
    new = fit(tiny_data, "alpha", root, tiny_config(seed=5)).artifact_id
    assert new != old
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: httpx.get(f"{base}/categories/alpha").json()["artifact_id"] == new,
               f"SIGHUP to reload alpha to {new}", interval=0.2)
    assert httpx.get(f"{base}/healthz").status_code == 200

