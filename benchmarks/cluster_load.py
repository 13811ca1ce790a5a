"""Cluster mode against the single-process server, in one run on one machine (issue 19).

    PYTHONPATH=. .venv/bin/python benchmarks/cluster_load.py --seconds 15 --out runs/cluster_load.json

Fits the demo category (synthetic tiles, 256 px, the default fit with the embedded
Lite2 weights; ``--artifact`` reuses a fitted folder), publishes it to an S3 API (moto in
server mode) and starts a two-node Ray cluster on loopback (``cluster.local``). Then, with
the same images (the demo's 36 test PNGs, 256x256, ``outputs=none``):

1. throughput and client p50/p95 at concurrency 1, 8 and 32 (closed loop, ``--seconds``
   each) of Ray Serve with one replica (2 torch threads) and with two replicas, one per node
   (1 thread each), each level measured right after the same level on the single-process
   server (``factory-inspect --threads 2 serve``, running all along), so that both see the
   same background load of a shared machine. Requests to Ray carry ``serve_multiplexed_model_id``.
   The overhead per request without the model: 200 sequential ``GET /v2/health/live``.
2. cold load: a category published after deployment, first request (the replica fetches it
   from the bucket, verifies the hashes, loads and warms it) against the next ones; and the
   fetch alone (download + verify, empty cache) in this process.
3. LRU eviction: one replica with 2 category slots; requests cycling over 2 categories (no
   eviction) against cycling over 3 (every request evicts one and reloads another from the
   replica's local cache).

Writes ``--out`` (JSON) and prints a markdown summary. The client shares the 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import server_load  # noqa: E402  (benchmarks/)

from cluster import control  # noqa: E402
from cluster.deployment import ClusterArgs  # noqa: E402
from cluster.local import LocalCluster, MotoServer, free_port, wait_for  # noqa: E402
from model.artifact.remote import RemoteSource, RemoteStore  # noqa: E402
from model.artifact.store import artifact_size_bytes  # noqa: E402
from model.jobs.demo_data import generate_category  # noqa: E402

LEVELS = (1, 8, 32)


def pct(ms: list[float]) -> dict[str, float | None]:
    return {f"p{q}": round(float(np.percentile(ms, q)), 1) if ms else None for q in (50, 95)}


async def closed_loop(base: str, category: str, images: list[tuple[str, bytes]], concurrency: int,
                      seconds: float, routed: bool) -> dict:
    """server_load's closed loop, without outputs; ``routed`` sends Ray Serve's model-id header."""
    headers = {"serve_multiplexed_model_id": category} if routed else {}
    return await server_load.closed_loop(base, category, images, concurrency, seconds, {"outputs": "none"},
                                         headers, warm=2)


def timed_post(base: str, category: str, image: tuple[str, bytes]) -> float:
    t = time.perf_counter()
    r = httpx.post(f"{base}/inspect/{category}", params={"outputs": "none"}, timeout=600,
                   files={"file": (image[0], image[1], "image/png")}, headers={"serve_multiplexed_model_id": category})
    r.raise_for_status()
    return (time.perf_counter() - t) * 1000


def single_process(root: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(workdir / "serve.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--threads", "2", "serve", "--artifacts", str(root),
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: _ready(f"http://127.0.0.1:{port}"), "the single-process server")
    return proc, f"http://127.0.0.1:{port}"


def side_by_side(single: str, ray: str, images, seconds: float) -> list[dict]:
    """Each level on the single-process server, then on Ray Serve."""
    rows = []
    for c in LEVELS:
        one = asyncio.run(closed_loop(single, "demo", images, c, seconds, routed=False))
        other = asyncio.run(closed_loop(ray, "demo", images, c, seconds, routed=True))
        rows.append({"concurrency": c, "single": one, "ray": other,
                     "throughput_ratio": round(other["images_per_s"] / max(one["images_per_s"], 1e-9), 2)})
        print(rows[-1], flush=True)
    return rows


def overhead(single: str, ray: str, n: int = 200) -> dict:
    """p50/p95 of ``GET /v2/health/live`` (no model): the serving path's own cost per request."""
    out = {}
    for name, base in (("single", single), ("ray", ray)):
        with httpx.Client(base_url=base, timeout=60) as client:
            client.get("/v2/health/live")
            ms = []
            for _ in range(n):
                t = time.perf_counter()
                client.get("/v2/health/live").raise_for_status()
                ms.append((time.perf_counter() - t) * 1000)
        out[name] = pct(ms)
    return out


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def deploy(cluster: LocalCluster, url: str, port: int, workdir: Path, **kw) -> str:
    args = ClusterArgs(artifacts=url, artifact_cache=str(workdir / f"cache-{time.time_ns()}"), **kw)
    started = time.perf_counter()
    control.deploy(cluster.address, args, "127.0.0.1", port)
    print(f"deployed {kw} in {time.perf_counter() - started:.1f} s", flush=True)
    return f"http://127.0.0.1:{port}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--artifact", type=Path, help="a fitted demo artifact folder (default: fit one)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "cluster_load.json")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fi-cluster-bench-"))
    data = generate_category(workdir / "data" / "demo", kind="tiles", seed=0)
    images = [(f.name, f.read_bytes()) for f in sorted((data / "test").glob("*/*.png"))]
    root = workdir / "root"
    if args.artifact:
        root.mkdir()
        shutil.copytree(args.artifact.resolve(), root / "demo")
    else:
        from model.jobs.fit import fit

        fit(data, "demo", root)
    out: dict = {"artifact_mb": round(artifact_size_bytes(root / "demo") / 1e6, 1), "seconds": args.seconds,
                 "images": f"{len(images)} demo test PNGs, 256x256, outputs=none"}
    moto = MotoServer(workdir / "moto.log")
    os.environ.update(moto.env())
    cluster = server = None
    try:
        boto3.client("s3").create_bucket(Bucket="bench")
        url = "s3://bench/plant"
        store = RemoteStore(url)
        for name in ("demo", "c1", "c2"):
            store.publish(root / "demo", category=name)
        t = time.perf_counter()
        RemoteSource(url, workdir / "fetch-cache").fetch("demo")
        out["fetch_ms"] = round((time.perf_counter() - t) * 1000, 1)

        server, single = single_process(root, workdir)
        cluster = LocalCluster(env=moto.env(), log_dir=workdir, cpus_per_node=2).start(workers=1)
        port = free_port()
        base = deploy(cluster, url, port, workdir, num_replicas=1, replica_cpus=1, settings={"torch_threads": 2})
        out["overhead_ms"] = overhead(single, base)
        out["ray_1_replica"] = side_by_side(single, base, images, args.seconds)
        base = deploy(cluster, url, port, workdir, num_replicas=2, replica_cpus=2, settings={"torch_threads": 1})
        out["ray_2_replicas"] = side_by_side(single, base, images, args.seconds)

        base = deploy(cluster, url, port, workdir, num_replicas=1, replica_cpus=1, max_categories_per_replica=2,
                      settings={"torch_threads": 2})
        store.publish(root / "demo", category="cold")
        out["cold_first_ms"] = round(timed_post(base, "cold", images[0]), 1)
        out["cold_next_ms"] = pct([timed_post(base, "cold", images[i % len(images)]) for i in range(1, 11)])
        timed_post(base, "demo", images[0])
        two = [timed_post(base, c, images[i % len(images)]) for i, c in enumerate(["demo", "c1"] * 10)]
        three = [timed_post(base, c, images[i % len(images)]) for i, c in enumerate(["demo", "c1", "c2"] * 7)]
        out["lru_two_categories_ms"], out["lru_three_categories_ms"] = pct(two[2:]), pct(three[3:])
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        if cluster is not None:
            cluster.stop()
        moto.stop()
    out["date"] = time.strftime("%Y-%m-%d")
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
