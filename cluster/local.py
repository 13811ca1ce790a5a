"""A Ray cluster of several nodes and an S3 API (moto) on loopback, to try cluster mode on
one machine: ``scripts/ray_demo.sh``, the cluster tests and the cluster benchmark use it.

Ray replaces a node address of 127.0.0.1 by the machine's network address, and keeps
other addresses as given; all of 127.0.0.0/8 is the loopback interface. So the head node is
``127.0.0.2``, worker nodes ``127.0.0.3``, ``127.0.0.4``... and nothing listens for or sends to
another network. Every node runs under ``ray start --block`` and moto under ``moto_server``,
each a child process of this one, small (one CPU each by default, a modest object store, no
dashboard); ``stop`` ends them with SIGTERM (then SIGKILL), so nothing outlives its owner.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAD_IP = "127.0.0.2"
START_TIMEOUT_S = 120.0  # a bound for a wedged start on a busy 2-core machine, not a measurement


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], what: str, timeout: float = START_TIMEOUT_S) -> object:
    """Poll ``condition`` until it is truthy; ``TimeoutError`` naming ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def _end(proc: subprocess.Popen, grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MotoServer:
    """moto's S3 API in server mode on ``127.0.0.1:<port>``."""

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._answers, f"moto on {self.url} (log: {log})")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                return True
        except OSError:
            return False

    def env(self) -> dict[str, str]:
        """The boto3 environment of a client of this server."""
        return {"AWS_ENDPOINT_URL_S3": self.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        _end(self.proc, grace=10.0)


class LocalCluster:
    """A head node and worker nodes on loopback addresses, each under ``ray start --block``."""

    def __init__(self, env: Mapping[str, str] = {}, cpus_per_node: float = 1, object_store_bytes: int = 100_000_000,
                 log_dir: Path | None = None) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="fi-ray-", dir="/tmp"))  # short: Ray's socket paths
        self.log_dir = log_dir or self.temp_dir
        self.port = free_port(HEAD_IP)
        self.address = f"{HEAD_IP}:{self.port}"
        self.cpus, self.object_store = cpus_per_node, object_store_bytes
        # A stopped node drains for at most 5 s (Ray's default, 30 s, waits for detached Serve actors).
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5", **env}
        self.nodes: dict[str, subprocess.Popen] = {}

    def start(self, workers: int = 1) -> LocalCluster:
        self._node(HEAD_IP, ["--head", f"--port={self.port}", "--include-dashboard=false",
                             f"--temp-dir={self.temp_dir}"])
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self) -> str:
        ip = f"127.0.0.{2 + len(self.nodes)}"
        self._node(ip, [f"--address={self.address}"])
        return ip

    def _node(self, ip: str, args: list[str]) -> None:
        cmd = [shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray", "start", "--block",
               f"--node-ip-address={ip}", f"--num-cpus={self.cpus}", f"--object-store-memory={self.object_store}",
               "--disable-usage-stats", *args]
        with open(self.log_dir / f"ray-node-{ip}.log", "wb") as out:
            self.nodes[ip] = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)
        wait_for(lambda: self._started(ip), f"the Ray node on {ip} (log: {self.log_dir}/ray-node-{ip}.log)")

    def _started(self, ip: str) -> bool:
        if self.nodes[ip].poll() is not None:
            raise RuntimeError(f"ray start on {ip} exited with {self.nodes[ip].returncode}")
        text = (self.log_dir / f"ray-node-{ip}.log").read_text(errors="replace")
        return "Ray runtime started" in text

    def stop_node(self, ip: str) -> None:
        """Stop one node (its raylet, workers and replicas), as a machine would go away."""
        _end(self.nodes.pop(ip))

    def stop(self) -> None:
        """Every node at once (each drains, then stops), then any of the cluster's processes left
        behind (an agent whose node went first); the temporary folder goes with them."""
        for proc in self.nodes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.nodes.values():
            _end(proc)
        self.nodes.clear()
        _end_pids(self._leftovers())
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _leftovers(self) -> list[int]:
        """Processes holding a file under this cluster's temporary folder (its logs): its own."""
        mine = []
        for fd_dir in Path("/proc").glob("[0-9]*/fd"):
            try:
                if any(str(self.temp_dir) in os.readlink(fd) for fd in fd_dir.iterdir()):
                    mine.append(int(fd_dir.parent.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
        return [pid for pid in mine if pid != os.getpid()]


def _end_pids(pids: list[int], grace: float = 10.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
