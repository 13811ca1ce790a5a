"""A real server process for tests: ``python -m cli.main serve`` under uvicorn.

``running_server`` starts it on a free loopback port, waits until ``/readyz`` answers
200 (failing with the log's tail if the process exits or never gets ready), and on exit
stops it with SIGTERM and asserts a graceful shutdown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, wait_until

READY_TIMEOUT_S = 60.0  # loading the models on a busy machine; a bound for a wedged start, not a measurement
STOP_TIMEOUT_S = 30.0


@dataclass
class Server:
    base: str  # http://127.0.0.1:<port>
    port: int
    root: Path  # the artifacts root it serves
    proc: subprocess.Popen
    log: Path  # its stdout and stderr

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cmd(root: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "cli.main", "--log-level", "INFO", "--threads", "1",
            "serve", "--artifacts", str(root), "--host", "127.0.0.1", "--port", str(port)]


def server_env(settings: Mapping[str, object] = {}) -> dict[str, str]:
    """This environment, importing this checkout, with ``FACTORY_INSPECT_<NAME>`` for each setting."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.update({f"FACTORY_INSPECT_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def wait_ready(server: Server, timeout: float = READY_TIMEOUT_S) -> None:
    def ready() -> bool:
        if server.proc.poll() is not None:
            pytest.fail(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            return httpx.get(f"{server.base}/readyz", timeout=5.0).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, lambda: f"{server.base}/readyz to answer 200; server log:\n{server.log_tail()}", timeout,
               interval=0.1)


def stop(server: Server) -> None:
    """SIGTERM, then assert it stopped by itself, cleanly, through the app's shutdown."""
    proc = server.proc
    if proc.poll() is not None:
        pytest.fail(f"server died during the test with {proc.returncode}:\n{server.log_tail()}")
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"server did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM:\n{server.log_tail()}")
    assert code in (0, -signal.SIGTERM), server.log_tail()  # uvicorn re-raises the signal
    assert "Application shutdown complete" in server.log.read_text(errors="replace")


@contextmanager
def running_server(root: Path, log: Path, settings: Mapping[str, object] = {}) -> Iterator[Server]:
    """Serve ``root`` (its output in ``log``) with ``settings`` passed as environment variables."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(serve_cmd(root, port), cwd=REPO, env=server_env(settings), stdout=out,
                                stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", port, root, proc, log)
    try:
        wait_ready(server)
        yield server
    except BaseException:
        if proc.poll() is None:  # the test's own failure is the story: just end the process
            proc.kill()
            proc.wait()
        raise
    stop(server)
