"""End-to-end load test of the real server over loopback: latency, throughput, batching, memory.

    .venv/bin/python benchmarks/server_load.py --artifacts runs/server_root --threads 2 --seconds 20 \\
        --requests 100 --out runs/server_load_cpu.json

where ``runs/server_root`` holds exactly two categories, e.g. copies of fitted artifacts (a copy,
not a link: a later fit prunes old versions)::

    mkdir -p runs/server_root
    cp -rL runs/ablation_artifacts/bottle-nns_x_gaussian runs/server_root/bottle
    cp -rL runs/ablation_artifacts/magnetic_tile-nns_x_gaussian runs/server_root/magnetic_tile

Without ``--artifacts`` it fits ``bottle`` and ``bottle2`` (``--set seed=1``) from ``--data``
into ``runs/server_artifacts`` (skipping those already there). It then starts
``python -m cli.main --threads N serve`` as a subprocess (``--setting MAX_WAIT_MS=10`` etc.
become ``FACTORY_INSPECT_*`` variables; those already in the environment pass through), waits
for ``/readyz`` and measures, always on ``--category`` with 900x900 PNGs cycled from
``<data>/test/*/``:

1. latency at concurrency 1: ``--requests`` sequential ``POST /inspect`` (multipart ``file``),
   client p50/p95/p99 and the server's mean ``timings_ms`` per stage, once with the default
   outputs (heatmap, mask) and once with ``outputs=none`` (no PNG encoding);
2. throughput (200 responses per second, closed loop) at concurrency 1, 4, 8, 16 for
   ``--seconds`` each, non-200 answers counted by status, and the mean ``inspect_batch_size``
   from ``/metrics`` (sum/count delta over each level);
3. server memory: VmRSS after loading and at the end, and VmHWM (peak), from ``/proc``.

The client runs on the same machine: at high concurrency it takes CPU from the server.
Writes ``--out`` (JSON) and the server's log beside it; prints a markdown summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("server_load")
CONCURRENCY = (1, 4, 8, 16)


# -- artifacts and the server process -------------------------------------------------------

def cli(threads: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "--threads", str(threads), *args]


def fit_two(data: Path, root: Path, device: str, threads: int) -> None:
    """Fit ``bottle`` (seed 0) and ``bottle2`` (seed 1) from ``data`` unless already published."""
    for category, seed in (("bottle", 0), ("bottle2", 1)):
        if (root / category / "manifest.json").exists():
            log.info("reusing %s", root / category)
            continue
        log.info("fitting %s into %s", category, root)
        subprocess.run(cli(threads, "fit", "--data", str(data), "--category", category, "--artifacts", str(root),
                           "--device", device, "--set", f"seed={seed}"), cwd=REPO, env=child_env({}), check=True)


def child_env(settings: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.update({f"FACTORY_INSPECT_{k.upper()}": v for k, v in settings.items()})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(root: Path, threads: int, device: str, settings: dict[str, str], log_path: Path):
    """Start the server, wait for ``/readyz``, yield ``(process, base_url)``; stop it afterwards."""
    port = free_port()
    cmd = cli(threads, "serve", "--artifacts", str(root), "--port", str(port), "--device", device)
    log.info("starting %s (log: %s)", " ".join(cmd[1:]), log_path)
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(settings), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after 600 s; see {log_path}")
            time.sleep(0.5)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in MB, from ``/proc/<pid>/status``."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def batch_stats(url: str) -> tuple[float, float]:
    """``(sum, count)`` of the ``inspect_batch_size`` histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    value = {m[0]: float(m[1]) for m in re.findall(r"^inspect_batch_size_(sum|count) (\S+)$", text, re.M)}
    return value.get("sum", 0.0), value.get("count", 0.0)


# -- measurements ---------------------------------------------------------------------------

def percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    return {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)}


def sequential(url: str, category: str, images: list[tuple[str, bytes]], n: int, outputs: str | None) -> dict:
    """``n`` requests one after another: client latency percentiles and mean server stages."""
    params = {"outputs": outputs} if outputs else {}
    latencies, stages, errors = [], {}, {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(n + 3):  # the first 3 are warm-up
            name, data = images[i % len(images)]
            t = time.perf_counter()
            r = client.post(f"/inspect/{category}", params=params, files={"file": (name, data, "image/png")})
            ms = (time.perf_counter() - t) * 1000
            if r.status_code != 200:
                errors[r.status_code] = errors.get(r.status_code, 0) + 1
                continue
            if i < 3:
                continue
            latencies.append(ms)
            for k, v in r.json()["timings_ms"].items():
                stages.setdefault(k, []).append(v)
    return {"outputs": outputs or "heatmap,mask (default)", "requests": len(latencies),
            "client_ms": percentiles(latencies),
            "client_ms_mean": round(float(np.mean(latencies)), 1) if latencies else None,
            "server_stage_ms_mean": {k: round(float(np.mean(v)), 1) for k, v in stages.items()}, "errors": errors}


async def closed_loop(url: str, category: str, images: list[tuple[str, bytes]], concurrency: int,
                      seconds: float, params: dict | None = None, headers: dict | None = None,
                      warm: int = 0) -> dict:
    """``concurrency`` clients each sending the next request as soon as the last one answers
    (after ``warm`` untimed requests that open the connection and load the category)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits, headers=headers or {}) as client:
        for name, data in images[:warm]:
            await client.post(f"/inspect/{category}", params=params, files={"file": (name, data, "image/png")})
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                name, data = images[i % len(images)]
                i += concurrency
                t = time.perf_counter()
                try:
                    r = await client.post(f"/inspect/{category}", params=params,
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
    return {"concurrency": concurrency, "seconds": round(elapsed, 1), "ok": ok,
            "images_per_s": round(ok / elapsed, 2), "client_ms": percentiles(latencies),
            "non_200": {str(k): v for k, v in statuses.items()}}


def load_images(data: Path, count: int = 16) -> list[tuple[str, bytes]]:
    """``count`` test PNGs spread evenly over every ``test/<type>/`` folder."""
    files = sorted((data / "test").glob("*/*.png"))
    if not files:
        raise SystemExit(f"no test PNGs under {data / 'test'}")
    step = max(1, len(files) // count)
    return [(f"{f.parent.name}_{f.name}", f.read_bytes()) for f in files[::step][:count]]


def png_size(data: bytes) -> str:
    """``WxH`` from a PNG's IHDR chunk."""
    width, height = struct.unpack(">II", data[16:24])
    return f"{width}x{height}"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "torch": version("torch"),
            "git": git.strip() + ("-dirty" if dirty.strip() else "")}


# -- report ---------------------------------------------------------------------------------

def summary(out: dict) -> str:
    lines = [f"### Server load: {out['device']}, {out['threads']} torch threads, {out['machine']['cpus']} CPUs "
             f"({out['machine']['cpu']}), categories {', '.join(out['categories'])}", "",
             "| c=1 latency | requests | p50 ms | p95 ms | p99 ms | server stages, mean ms |",
             "|---|---|---|---|---|---|"]
    for run in out["latency"]:
        stages = ", ".join(f"{k} {v}" for k, v in run["server_stage_ms_mean"].items())
        c = run["client_ms"]
        lines.append(f"| outputs={run['outputs']} | {run['requests']} | {c.get('p50')} | {c.get('p95')} | "
                     f"{c.get('p99')} | {stages} |")
    lines += ["", "| concurrency | images/s | p50 ms | p95 ms | mean batch | non-200 |", "|---|---|---|---|---|---|"]
    for row in out["throughput"]:
        lines.append(f"| {row['concurrency']} | {row['images_per_s']} | {row['client_ms'].get('p50')} | "
                     f"{row['client_ms'].get('p95')} | {row['mean_batch_size']} | {row['non_200'] or '-'} |")
    m = out["memory_mb"]
    lines += ["", f"Server memory ({len(out['categories'])} categories): VmRSS {m['loaded']['VmRSS']} MB after "
              f"loading, {m['end']['VmRSS']} MB at the end, peak VmHWM {m['end']['VmHWM']} MB."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/mvtec_ad/bottle")
    p.add_argument("--artifacts", type=Path, help="existing artifacts root (default: fit into runs/server_artifacts)")
    p.add_argument("--category", default="bottle", help="the category requests go to")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=20.0, help="per throughput level")
    p.add_argument("--requests", type=int, default=100, help="per latency run")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                   help="server setting as FACTORY_INSPECT_<NAME>, e.g. MAX_WAIT_MS=10")
    p.add_argument("--out", type=Path, default=None, help="default: runs/server_load_<device>.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    out_path = args.out or REPO / f"runs/server_load_{args.device}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    settings = dict(s.split("=", 1) for s in args.setting)
    root = args.artifacts
    if root is None:
        root = REPO / "runs/server_artifacts"
        fit_two(args.data, root, args.device, args.threads)
    images = load_images(args.data)

    server_log = out_path.with_suffix(".server.log")
    with server(root.resolve(), args.threads, args.device, settings, server_log) as (proc, url):
        categories = {c["name"]: c for c in httpx.get(f"{url}/categories", timeout=10).json()["categories"]}
        if categories.get(args.category, {}).get("state") != "ready":
            raise SystemExit(f"category {args.category} is not serving: {categories.get(args.category)}")
        loaded = memory_mb(proc.pid)
        log.info("ready: %s; %s", ", ".join(categories), loaded)
        latency = [sequential(url, args.category, images, args.requests, outputs) for outputs in (None, "none")]
        for run in latency:
            log.info("c=1 outputs=%s: %s", run["outputs"], run["client_ms"])
        throughput = []
        for c in CONCURRENCY:
            before = batch_stats(url)
            row = asyncio.run(closed_loop(url, args.category, images, c, args.seconds))
            after = batch_stats(url)
            calls = after[1] - before[1]
            row["inference_calls"] = int(calls)
            row["mean_batch_size"] = round((after[0] - before[0]) / calls, 2) if calls else None
            log.info("c=%d: %s img/s, mean batch %s, non-200 %s", c, row["images_per_s"], row["mean_batch_size"],
                     row["non_200"])
            throughput.append(row)
        end = memory_mb(proc.pid)

    out = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(), "device": args.device, "threads": args.threads,
        "settings": {k: v for k, v in child_env(settings).items() if k.startswith("FACTORY_INSPECT_")},
        "artifacts": str(root), "category": args.category,
        "categories": {k: v["artifact_id"] for k, v in categories.items()},
        "images": {"count": len(images), "files": [n for n, _ in images], "size": png_size(images[0][1])},
        "latency": latency, "throughput": throughput, "memory_mb": {"loaded": loaded, "end": end},
    }
    out_path.write_text(json.dumps(out, indent=2))
    log.info("wrote %s", out_path)
    print(summary(out))


if __name__ == "__main__":
    main()
