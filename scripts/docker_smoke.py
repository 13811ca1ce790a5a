"""The checks of scripts/docker_smoke.sh that speak HTTP or read artifacts (run with .venv's python).

    wait URL [--timeout S] [--container NAME]   until URL answers 200 (fails early if the container exits)
    compare --category C --good IMG --defect IMG --inside URL --outside URL [--requests N] [--out JSON]
                                               same verdicts, scores within 1e-4 relative; served p50 of both
    prometheus --url URL --job J --category C --images N [--timeout S]
                                               Prometheus scraped the server: up == 1 and the images counted
    refused --url URL --category C --image IMG  the category answers 503 and the message says to re-fit
    artifact --artifacts DIR --category C [--expect-id ID] [--out JSON]
                                               the published artifact loads (every SHA-256 checked); its id

Each prints one line per finding and exits 1 on a failed check, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REL_TOL = 1e-4
DOCKER = os.environ.get("DOCKER", "docker")


def fail(message: str) -> None:
    print(f"FAIL {message}", flush=True)
    sys.exit(1)


def container_running(name: str) -> bool:
    out = subprocess.run([DOCKER, "inspect", "-f", "{{.State.Running}} {{.RestartCount}}", name],
                         capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.split() == ["true", "0"]


def wait(url: str, timeout: float, container: str | None) -> float:
    """Seconds until ``url`` answered 200; fails when the deadline passes or the container stops."""
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout:
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return time.monotonic() - start
            last = f"HTTP {r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if container and not container_running(container):
            fail(f"{container} is not running (or restarted) while waiting for {url}; last answer: {last}")
        time.sleep(0.5)
    fail(f"{url} did not answer 200 within {timeout:.0f} s; last answer: {last}")
    return 0.0


def inspect(client: httpx.Client, url: str, category: str, image: Path) -> tuple[dict, float]:
    """One POST /inspect (the default outputs: heatmap and mask too); the body and the client's wall ms."""
    t0 = time.perf_counter()
    r = client.post(f"{url}/inspect/{category}", files={"file": (image.name, image.read_bytes(), "image/png")})
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        fail(f"{url}/inspect/{category} {image.name}: HTTP {r.status_code} {r.text[:300]}")
    return r.json(), ms


def compare(args: argparse.Namespace) -> None:
    servers = {"inside": args.inside.rstrip("/"), "outside": args.outside.rstrip("/")}
    images = {"good": Path(args.good), "defect": Path(args.defect)}
    result: dict = {"images": {k: str(v) for k, v in images.items()}, "servers": servers, "verdicts": {}}
    with httpx.Client(timeout=60) as client:
        for kind, image in images.items():
            bodies = {where: inspect(client, url, args.category, image)[0] for where, url in servers.items()}
            inside, outside = bodies["inside"], bodies["outside"]
            rel = abs(inside["score"] - outside["score"]) / max(abs(outside["score"]), 1e-12)
            result["verdicts"][kind] = {where: {"score": b["score"], "is_anomalous": b["is_anomalous"],
                                                "threshold": b["threshold"], "artifact_id": b.get("artifact_id")}
                                        for where, b in bodies.items()} | {"score_rel_diff": rel}
            print(f"{kind:6s} inside score {inside['score']:.6g} anomalous={inside['is_anomalous']}  "
                  f"outside score {outside['score']:.6g} anomalous={outside['is_anomalous']}  rel diff {rel:.2e}")
            if inside["is_anomalous"] != outside["is_anomalous"]:
                fail(f"{kind}: verdicts differ inside and outside the container")
            if rel > REL_TOL:
                fail(f"{kind}: scores differ by {rel:.2e} (relative), more than {REL_TOL}")
            if inside.get("artifact_id") != outside.get("artifact_id"):
                fail(f"{kind}: artifact ids differ: {inside.get('artifact_id')} vs {outside.get('artifact_id')}")
        if result["verdicts"]["good"]["inside"]["is_anomalous"] or not result["verdicts"]["defect"]["inside"]["is_anomalous"]:
            fail("the container does not call the good image good and the defective one defective")

        # Served latency, in one run: the two servers take turns (one request each, in sequence), so both
        # see the same machine load; warm-up requests first. The default outputs (heatmap, mask) are on.
        for _ in range(args.warmup):
            for url in servers.values():
                inspect(client, url, args.category, images["good"])
        wall: dict[str, list[float]] = {k: [] for k in servers}
        total: dict[str, list[float]] = {k: [] for k in servers}
        for _ in range(args.requests):
            for where, url in servers.items():
                body, ms = inspect(client, url, args.category, images["good"])
                wall[where].append(ms)
                total[where].append(body["timings_ms"].get("total", float("nan")))
    result["latency_ms"] = {
        where: {"requests": len(wall[where]), "client_p50": statistics.median(wall[where]),
                "client_p95": sorted(wall[where])[int(0.95 * (len(wall[where]) - 1))],
                "server_total_p50": statistics.median(total[where])}
        for where in servers}
    for where, lat in result["latency_ms"].items():
        print(f"{where:7s} served p50 {lat['client_p50']:.1f} ms (p95 {lat['client_p95']:.1f} ms, server total p50 "
              f"{lat['server_total_p50']:.1f} ms) over {lat['requests']} requests")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


def query(url: str, promql: str) -> list[dict]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def prometheus(args: argparse.Namespace) -> None:
    """Wait until Prometheus has scraped the server (``up`` = 1) and counted at least ``images`` images."""
    url = args.url.rstrip("/")
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < args.timeout:
        try:
            up = query(url, f'up{{job="{args.job}"}}')
            images = query(url, f'sum(inspect_images_total{{job="{args.job}",category="{args.category}"}})')
            seen = float(images[0]["value"][1]) if images else 0.0
            last = f"up={[s['value'][1] for s in up]} images={seen:g}"
            if up and all(s["value"][1] == "1" for s in up) and seen >= args.images:
                targets = httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
                print(f"prometheus scraped {[t['scrapeUrl'] for t in targets]}: {last} "
                      f"after {time.monotonic() - start:.1f} s")
                return
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1)
    fail(f"Prometheus did not see the server's metrics within {args.timeout:.0f} s ({last})")


def refused(args: argparse.Namespace) -> None:
    """An artifact of another format version: 503 for the category, with the re-fit message."""
    image = Path(args.image)
    r = httpx.post(f"{args.url.rstrip('/')}/inspect/{args.category}",
                   files={"file": (image.name, image.read_bytes(), "image/png")}, timeout=60)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    print(f"POST /inspect/{args.category}: HTTP {r.status_code} {json.dumps(body)[:300]}")
    if r.status_code != 503:
        fail(f"expected 503 for an artifact of another format version, got {r.status_code}")
    detail = httpx.get(f"{args.url.rstrip('/')}/categories/{args.category}", timeout=10)
    print(f"GET /categories/{args.category}: HTTP {detail.status_code} {detail.text[:300]}")
    if "re-fit" not in r.text + detail.text:
        fail("the answers do not say to re-fit")


def artifact(args: argparse.Namespace) -> None:
    """Load the published artifact (hashes checked); print and optionally save where it points."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from model.artifact.store import load_artifact

    link = Path(args.artifacts) / args.category
    loaded = load_artifact(link)
    info = {"artifact_id": loaded.artifact_id, "target": os.readlink(link),
            "files": dict(loaded.manifest.files)}
    print(f"{link} -> {info['target']}: artifact {info['artifact_id']}, {len(info['files'])} files, hashes match")
    if args.expect_id and info["artifact_id"] != args.expect_id:
        fail(f"published artifact is {info['artifact_id']}, expected {args.expect_id}")
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("url")
    w.add_argument("--timeout", type=float, default=180)
    w.add_argument("--container")
    c = sub.add_parser("compare")
    for name in ("--category", "--good", "--defect", "--inside", "--outside"):
        c.add_argument(name, required=True)
    c.add_argument("--requests", type=int, default=40)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--out")
    m = sub.add_parser("prometheus")
    m.add_argument("--url", required=True)
    m.add_argument("--job", required=True)
    m.add_argument("--category", required=True)
    m.add_argument("--images", type=float, required=True)
    m.add_argument("--timeout", type=float, default=120)
    r = sub.add_parser("refused")
    r.add_argument("--url", required=True)
    r.add_argument("--category", required=True)
    r.add_argument("--image", required=True)
    a = sub.add_parser("artifact")
    a.add_argument("--artifacts", required=True)
    a.add_argument("--category", required=True)
    a.add_argument("--expect-id")
    a.add_argument("--out")
    args = p.parse_args()
    if args.cmd == "wait":
        print(f"{args.url} answered 200 after {wait(args.url, args.timeout, args.container):.1f} s")
    else:
        {"compare": compare, "prometheus": prometheus, "refused": refused, "artifact": artifact}[args.cmd](args)


if __name__ == "__main__":
    main()
