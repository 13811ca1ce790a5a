"""End to end through a real server process: ``python -m cli.main serve`` under uvicorn."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from model.jobs.fit import fit
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
BODY_LIMIT = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@dataclass
class Server:
    base: str  # http://127.0.0.1:<port>
    root: Path  # the artifacts root it serves
    proc: subprocess.Popen




@pytest.fixture(scope="module")
def server(one_torch_thread, request, tmp_path_factory) -> Iterator[Server]:
    """A served copy of the tiny artifacts root."""
    tiny_artifacts = request.getfixturevalue("tiny_artifacts")
    root = tmp_path_factory.mktemp("served") / "artifacts"
    shutil.copytree(tiny_artifacts, root, symlinks=True)
    port = free_port()
    log = root.parent / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACTORY_INSPECT_MAX_BODY_BYTES": str(BODY_LIMIT)}
    cmd = [sys.executable, "-m", "cli.main", "--log-level", "INFO", "--threads", "1",
           "serve", "--artifacts", str(root), "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log)
        yield Server(base, root, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("server did not stop within 10 s of SIGTERM")
        assert code in (0, -signal.SIGTERM), log.read_text()[-3000:]  # uvicorn re-raises the signal
        assert "Application shutdown complete" in log.read_text()


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
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/categories/alpha").json()["artifact_id"] == new:
            break
        time.sleep(0.2)
    else:
        pytest.fail("SIGHUP did not reload alpha")
    assert httpx.get(f"{base}/healthz").status_code == 200

