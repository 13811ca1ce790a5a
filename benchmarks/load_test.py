"""Mixed-traffic soak of a real server on loopback: concurrency N for a fixed time.

    .venv/bin/python benchmarks/load_test.py --seconds 120 --concurrency 32 --out runs/reliability_load.json

Starts ``python -m cli.main --threads T serve`` on a free port over ``--artifacts`` (default:
a tiny category fitted once into ``runs/reliability_artifacts`` from generated data, 64 px,
random-init backbone: cheap, so the server, not the model, is under test). Each of
``--concurrency`` closed-loop clients sends, at random, a valid 128x128 PNG (90%), random
bytes (5%, expect 400) or a body over ``max_body_bytes`` (5%, expect 413). Records requests
per class, responses by status and error code, p50/p95/p99 per class (503 ``overloaded``
separately), server VmRSS every second from /proc (start, max, end, least-squares slope in
MB/min) and ``inspect_in_flight`` after the run (must be 0). Valid requests may only answer
200 or a 503 ``overloaded``; anything else is an error and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from server_load import server  # noqa: E402  (benchmarks/: start serve, wait for /readyz, stop)

MAX_BODY = 1_000_000


def tiny_root() -> Path:
    root = REPO / "runs" / "reliability_artifacts"
    if (root / "tiny").exists():
        return root
    from model.jobs.demo_data import generate_category
    from model.jobs.fit import fit
    from tests.conftest import tiny_config

    data = generate_category(REPO / "runs" / "reliability_data" / "tiles", kind="tiles", n_train=12,
                             n_test_good=4, n_test_defect=8, size=128, seed=0)
    fit(data, "tiny", root, tiny_config())
    return root


def valid_images() -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024.0


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000.0, 1) if values else None


async def main_async(args, base: str, pid: int) -> dict:
    images = valid_images()
    rnd = random.Random(1)
    lat: dict[str, list[float]] = defaultdict(list)
    by_class: dict[str, Counter] = defaultdict(Counter)
    sent = Counter()
    rss: list[tuple[float, float]] = []
    stop = time.monotonic() + args.seconds
    t_start = time.monotonic()

    async def sampler():
        while time.monotonic() < stop:
            rss.append((time.monotonic() - t_start, rss_mb(pid)))
            await asyncio.sleep(1.0)

    async def worker(client: httpx.AsyncClient):
        while time.monotonic() < stop:
            u = rnd.random()
            if u < 0.90:
                kind, body = "valid", rnd.choice(images)
            elif u < 0.95:
                kind, body = "invalid", rnd.randbytes(rnd.randint(1, 5000))
            else:
                kind, body = "oversize", b"\0" * (MAX_BODY + 1 + rnd.randint(0, 100_000))
            sent[kind] += 1
            t = time.perf_counter()
            try:
                r = await client.post(f"{base}/inspect/{args.category}", content=body,
                                      headers={"Content-Type": "image/png"}, params={"outputs": args.outputs})
                code = r.json().get("code", "ok") if r.status_code != 200 else "ok"
                key = f"{r.status_code} {code}"
            except httpx.TransportError as exc:
                key = f"transport {type(exc).__name__}"
            dt = time.perf_counter() - t
            by_class[kind][key] += 1
            lat[f"{kind} 503" if key == "503 overloaded" else kind].append(dt)

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(sampler(), *(worker(client) for _ in range(args.concurrency)))
        await asyncio.sleep(1.0)
        metrics = (await client.get(f"{base}/metrics")).text
    in_flight = float(re.search(r"^inspect_in_flight ([0-9.eE+-]+)$", metrics, re.M).group(1))
    t, m = np.array([x for x, _ in rss]), np.array([y for _, y in rss])
    slope = float(np.polyfit(t / 60.0, m, 1)[0]) if len(t) > 2 else None
    valid_errors = {k: v for k, v in by_class["valid"].items() if k not in ("200 ok", "503 overloaded")}
    return {
        "seconds": args.seconds, "concurrency": args.concurrency, "category": args.category,
        "outputs": args.outputs, "threads": args.threads, "max_body_bytes": MAX_BODY,
        "sent": dict(sent), "total": sum(sent.values()),
        "responses": {k: dict(v) for k, v in by_class.items()},
        "latency_ms": {k: {"n": len(v), "p50": pct(v, 50), "p95": pct(v, 95), "p99": pct(v, 99)}
                       for k, v in sorted(lat.items())},
        "valid_200_per_s": round(by_class["valid"]["200 ok"] / args.seconds, 1),
        "rss_mb": {"start": round(float(m[0]), 1), "max": round(float(m.max()), 1), "end": round(float(m[-1]), 1),
                   "slope_mb_per_min": None if slope is None else round(slope, 2), "samples": len(m)},
        "in_flight_end": in_flight, "valid_errors": valid_errors,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", default=None, help="artifacts root (default: fit a tiny category)")
    p.add_argument("--category", default="tiny")
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="server torch threads")
    p.add_argument("--outputs", default="heatmap,mask")
    p.add_argument("--out", default="runs/reliability_load.json")
    args = p.parse_args()
    root = Path(args.artifacts) if args.artifacts else tiny_root()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"max_body_bytes": str(MAX_BODY)}
    with server(root, args.threads, "cpu", settings, out.with_suffix(".server.log")) as (proc, base):
        report = asyncio.run(main_async(args, base, proc.pid))
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    ok = report["in_flight_end"] == 0 and not report["valid_errors"]
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
