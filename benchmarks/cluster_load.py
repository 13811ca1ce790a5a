"""Cluster mode against the single-process server, in one run on one machine (issue 19).

    PYTHONPATH=. .venv/bin/python benchmarks/cluster_load.py --seconds 15 --out runs/cluster_load.json

Fits the demo category (synthetic tiles, 256 px, the default fit with the embedded
Lite2 weights; ``--artifact`` reuses a fitted folder), publishes it to an S3 API (moto in
server mode) and starts a two-node Ray cluster on loopback (``cluster.local``). Then, with
the same images (the demo's 36 test PNGs, 256x256, ``outputs=none``):

1. throughput and client p50/p95 at concurrency 1, 8 and 32 (closed loop, ``--seconds``
   each) against: the single-process server (``factory-inspect --threads 2 serve``); Ray Serve
   with one replica (2 torch threads); Ray Serve with two replicas, one per node (1 thread
   each). Requests to Ray carry ``serve_multiplexed_model_id``.
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

from cli.synthetic import generate_category  # noqa: E402
from cluster import control  # noqa: E402
from cluster.deployment import ClusterArgs  # noqa: E402
from cluster.local import LocalCluster, MotoServer, free_port, wait_for  # noqa: E402
from model.artifact.remote import RemoteSource, RemoteStore  # noqa: E402
from model.artifact.store import artifact_size_bytes  # noqa: E402

LEVELS = (1, 8, 32)


def pct(ms: list[float]) -> dict[str, float | None]:
    return {f"p{q}": round(float(np.percentile(ms, q)), 1) if ms else None for q in (50, 95)}


async def closed_loop(base: str, category: str, images: list[tuple[str, bytes]], concurrency: int,
                      seconds: float, routed: bool) -> dict:
    latencies, statuses = [], {}
    headers = {"serve_multiplexed_model_id": category} if routed else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits, headers=headers) as client:
        for name, data in images[:2]:  # warm the connection and the category
            await client.post(f"/inspect/{category}", params={"outputs": "none"},
                              files={"file": (name, data, "image/png")})
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                name, data = images[i % len(images)]
                i += concurrency
                t = time.perf_counter()
                try:
                    r = await client.post(f"/inspect/{category}", params={"outputs": "none"},
                                          files={"file": (name, data, "image/png")})
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append((time.perf_counter() - t) * 1000)

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    ok = statuses.pop(200, 0)
    return {"concurrency": concurrency, "ok": ok, "images_per_s": round(ok / elapsed, 2), "client_ms": pct(latencies),
            "non_200": {str(k): v for k, v in statuses.items()}}


def load(base: str, category: str, images, seconds: float, routed: bool) -> list[dict]:
    return [asyncio.run(closed_loop(base, category, images, c, seconds, routed)) for c in LEVELS]


def timed_post(base: str, category: str, image: tuple[str, bytes]) -> float:
    t = time.perf_counter()
    r = httpx.post(f"{base}/inspect/{category}", params={"outputs": "none"}, timeout=600,
                   files={"file": (image[0], image[1], "image/png")}, headers={"serve_multiplexed_model_id": category})
    r.raise_for_status()
    return (time.perf_counter() - t) * 1000


def single_process(root: Path, images, seconds: float, workdir: Path) -> list[dict]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(workdir / "serve.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--threads", "2", "serve", "--artifacts", str(root),
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _ready(f"http://127.0.0.1:{port}"), "the single-process server")
        return load(f"http://127.0.0.1:{port}", "demo", images, seconds, routed=False)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


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
    cluster = None
    try:
        boto3.client("s3").create_bucket(Bucket="bench")
        url = "s3://bench/plant"
        store = RemoteStore(url)
        for name in ("demo", "c1", "c2"):
            store.publish(root / "demo", category=name)
        t = time.perf_counter()
        RemoteSource(url, workdir / "fetch-cache").fetch("demo")
        out["fetch_ms"] = round((time.perf_counter() - t) * 1000, 1)

        out["single_process"] = single_process(root, images, args.seconds, workdir)
        print("single process", out["single_process"], flush=True)
        cluster = LocalCluster(env=moto.env(), log_dir=workdir, cpus_per_node=2).start(workers=1)
        port = free_port()
        base = deploy(cluster, url, port, workdir, num_replicas=1, replica_cpus=1, settings={"torch_threads": 2})
        out["ray_1_replica"] = load(base, "demo", images, args.seconds, routed=True)
        print("ray 1 replica", out["ray_1_replica"], flush=True)
        base = deploy(cluster, url, port, workdir, num_replicas=2, replica_cpus=2, settings={"torch_threads": 1})
        out["ray_2_replicas"] = load(base, "demo", images, args.seconds, routed=True)
        print("ray 2 replicas", out["ray_2_replicas"], flush=True)

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
        if cluster is not None:
            cluster.stop()
        moto.stop()
    out["date"] = time.strftime("%Y-%m-%d")
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
