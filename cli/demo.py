"""The README's main job: data -> fit -> serve -> inspect one image over HTTP.

Without ``--data`` it generates a deterministic synthetic category (the project cannot
ship real images), fits it with the embedded offline backbone, starts the real server
on a free loopback port, posts one defective and one good test image, prints the
verdicts and saves the returned heatmap and mask PNGs.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from model.jobs.demo_data import generate_category, pick_images
from model.jobs.fit import fit
from model.reporting.progress import ProgressFactory, silent_progress
from service.app import create_app
from service.settings import Settings

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifacts: Path, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    """Run the real app with uvicorn in a thread; returns once ``/readyz`` answers 200."""
    config = uvicorn.Config(create_app(Settings(artifacts=artifacts)), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server, thread
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.should_exit = True
    raise RuntimeError("server did not become ready within 120 s")


def save_png(b64: str | None, path: Path) -> Path | None:
    if not b64:
        return None
    path.write_bytes(base64.b64decode(b64))
    return path


def run_demo(
    workdir: Path, data: str | None = None, category: str = "demo", progress: ProgressFactory = silent_progress
) -> int:
    """Fit, serve and inspect; prints verdicts and where the PNGs are. Returns an exit code."""
    workdir.mkdir(parents=True, exist_ok=True)
    if data is None:
        data_path = workdir / "data" / category
        print(f"generating a synthetic category in {data_path}")
        generate_category(data_path, kind="tiles", seed=0)
    else:
        data_path = Path(data)
    artifacts = workdir / "artifacts"
    print(f"fitting {category} from {data_path / 'train' / 'good'} (embedded EfficientNet-Lite2 weights)")
    report = fit(data_path, category, artifacts, progress=progress)
    print(f"artifact {report.artifact_id}: {report.artifact_bytes / 1e6:.1f} MB in {report.seconds['total']:.1f} s")

    port = free_port()
    server, thread = start_server(artifacts, port)
    try:
        for image in pick_images(data_path):
            with open(image, "rb") as fh:
                resp = httpx.post(
                    f"http://127.0.0.1:{port}/inspect/{category}", files={"file": (image.name, fh, "image/png")},
                    timeout=60,
                )
            body = resp.json()
            if resp.status_code != 200:
                print(f"{image}: HTTP {resp.status_code} {json.dumps(body)}")
                return 1
            stem = f"{image.parent.name}_{image.stem}"
            heatmap = save_png(body.get("heatmap"), workdir / f"{stem}_heatmap.png")
            mask = save_png(body.get("mask"), workdir / f"{stem}_mask.png")
            verdict = "DEFECT" if body["is_anomalous"] else "GOOD"
            print(f"{image.parent.name}/{image.name}: {verdict}  score={body['score']:.4g} "
                  f"normalized={body['normalized_score']:.3f} threshold={body['threshold']:.4g} "
                  f"total={body['timings_ms'].get('total', float('nan')):.1f} ms")
            print(f"  heatmap: {heatmap}\n  mask:    {mask}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return 0
