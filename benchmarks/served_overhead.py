"""What the HTTP path adds to the model: served p50 of one 900x900 PNG against the server's own
``timings_ms`` (inference, decode, encode), for one or more checkouts side by side in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/served_overhead.py --artifacts runs/served_root \\
        --image ../shared/data/mvtec_ad/bottle/test/broken_large/000.png --checkout . --checkout /tmp/prev

Each checkout's server (``python -m cli.main --threads 2 serve``, that checkout on PYTHONPATH)
serves ``--artifacts`` on loopback in turn; after 5 warm-up requests, ``--requests`` sequential
``POST /inspect/<category>`` with the default outputs (heatmap and mask). Prints, per checkout:
client p50, the p50 of ``timings_ms.inference``, ``decode`` and ``encode``, and served p50 over
inference p50 (issue 36's target: at most 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(checkout: Path, artifacts: Path, category: str, image: bytes, n: int) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--threads", "2", "serve", "--artifacts",
                             str(artifacts.resolve()), "--port", str(port)], cwd=checkout, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the server of {checkout} did not get ready")
                time.sleep(0.2)
            walls, stages = [], []
            for i in range(5 + n):
                started = time.perf_counter()
                r = c.post(f"/inspect/{category}", files={"file": ("part.png", image, "image/png")})
                wall = (time.perf_counter() - started) * 1000
                r.raise_for_status()
                if i >= 5:
                    walls.append(wall)
                    stages.append(r.json()["timings_ms"])
    finally:
        proc.terminate()
        proc.wait(30)
    p50 = {k: float(np.median([s[k] for s in stages])) for k in ("inference", "decode", "encode", "total")}
    return {"served_p50_ms": float(np.median(walls)), **{f"{k}_p50_ms": v for k, v in p50.items()},
            "served_over_inference": float(np.median(walls)) / p50["inference"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--category", default="bottle")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--checkout", type=Path, action="append", required=True)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("runs/served_overhead.json"))
    args = p.parse_args()
    image = args.image.read_bytes()
    results = {f"{i}: {c}": measure(c, args.artifacts, args.category, image, args.requests)
               for i, c in enumerate(args.checkout)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    for c, r in results.items():
        print(f"{c}: served p50 {r['served_p50_ms']:.1f} ms, inference {r['inference_p50_ms']:.1f}, decode "
              f"{r['decode_p50_ms']:.1f}, encode {r['encode_p50_ms']:.1f} ms; served / inference "
              f"{r['served_over_inference']:.2f}")


if __name__ == "__main__":
    main()
