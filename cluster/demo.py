"""``scripts/ray_demo.sh``: cluster mode end to end on one machine.

Starts an S3 API (moto in server mode) and a two-node Ray cluster on loopback, fits the demo
category (the deterministic synthetic one of ``factory-inspect demo``, embedded offline
backbone) with ``factory-inspect fit --artifacts s3://...`` (publish: version, then pointer),
deploys the Ray Serve application with ``factory-inspect cluster deploy``, posts one
defective and one good test image (``/inspect``, and the same images over OIP v2), prints the
verdicts, and tears everything down. Exit status 0 only if every step worked.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import httpx

from cluster.local import REPO, LocalCluster, MotoServer, free_port
from model.jobs.demo_data import generate_category, pick_images

BUCKET = "factory-artifacts"


def run_cli(*args: str, env: dict[str, str]) -> None:
    print(f"$ factory-inspect {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO, check=True)


def inspect_image(base: str, category: str, image: Path) -> tuple[dict, float]:
    """``POST /inspect`` (routed to a replica holding the category) and the OIP v2 score of the same file."""
    headers = {"serve_multiplexed_model_id": category}
    r = httpx.post(f"{base}/inspect/{category}", files={"file": (image.name, image.read_bytes(), "image/png")},
                   params={"outputs": "mask"}, headers=headers, timeout=300)
    r.raise_for_status()
    v2 = httpx.post(f"{base}/v2/models/{category}/infer", headers=headers, timeout=300, json={
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "data": [base64.b64encode(image.read_bytes()).decode()]}], "outputs": [{"name": "score"}]})
    v2.raise_for_status()
    return r.json(), v2.json()["outputs"][0]["data"][0]


def run(workdir: Path, category: str, fit_args: list[str]) -> int:
    started = time.monotonic()
    moto = MotoServer(workdir / "moto.log")
    cluster = None
    try:
        env = {**os.environ, **moto.env(), "PYTHONPATH": str(REPO)}
        os.environ.update(moto.env())
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        print(f"S3 API (moto) on {moto.url}, bucket {BUCKET}")
        data = generate_category(workdir / "data" / category, kind="tiles", seed=0)
        url = f"s3://{BUCKET}/plant"
        run_cli("--threads", str(os.cpu_count() or 1), "fit", "--data", str(data), "--category", category,
                "--artifacts", url, *fit_args, env=env)
        cluster = LocalCluster(env=moto.env(), log_dir=workdir).start(workers=1)
        print(f"Ray cluster: head {cluster.address}, worker 127.0.0.3 (logs in {workdir})")
        port = free_port()
        run_cli("cluster", "deploy", "--address", cluster.address, "--artifacts", url, "--http-port", str(port),
                "--replicas", "2", "--replica-cpus", "0.5", "--artifact-cache", str(workdir / "cache"),
                "--setting", "torch_threads=1", env=env)
        base = f"http://127.0.0.1:{port}"
        for image in pick_images(data):
            body, v2_score = inspect_image(base, category, image)
            verdict = "DEFECT" if body["is_anomalous"] else "GOOD"
            print(f"{image.parent.name}/{image.name}: {verdict}  score={body['score']:.4g} "
                  f"threshold={body['threshold']:.4g} regions={len(body['regions'])} "
                  f"(OIP v2 score {v2_score:.4g}; artifact {body['artifact_id']})")
            if abs(v2_score - body["score"]) > 1e-4 * max(1.0, abs(body["score"])):
                print("OIP v2 and /inspect disagree", file=sys.stderr)
                return 1
        print(f"all done in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        print("tearing down: Ray nodes, moto")
        if cluster is not None:
            cluster.stop()
        moto.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ray_demo", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help="logs and data (default: a new temporary folder)")
    p.add_argument("--category", default="demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fit config overrides")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # tear down on SIGTERM too
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fi-ray-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fit_args = [a for item in args.set for a in ("--set", item)]
    try:
        return run(workdir, args.category, fit_args)
    except (subprocess.CalledProcessError, httpx.HTTPError, RuntimeError, TimeoutError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
