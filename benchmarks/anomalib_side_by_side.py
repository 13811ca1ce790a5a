"""Side-by-side CPU benchmark: our default model against anomalib PatchCore and PaDiM (issue 8).

    .venv/bin/python benchmarks/anomalib_side_by_side.py --data ../shared/data/mvtec_ad/bottle \
        --category bottle --out runs/anomalib_side_by_side.json

What it does, in one invocation and strictly one method at a time:

1. Creates anomalib's own virtual environment (``--venv``, default ``runs/anomalib-venv``)
   with ``pip install torch==2.14.1 torchvision==0.29.1 anomalib`` unless it already
   imports anomalib, and checks that pip kept that torch / torchvision pair.
2. Writes the backbone weights: timm's ``features_only`` ``tf_efficientnet_lite2`` built by
   ``model.method.backbone.create_feature_extractor`` from our embedded offline ImageNet weights,
   saved as safetensors. anomalib builds the same timm network with ``pre_trained=False``
   and loads this file strictly (``benchmarks/anomalib_runner.py``), so no hub is reached.
3. Runs each method (``--methods``): fit on ``<data>/train/good``, anomaly maps of every
   ``<data>/test`` image at 256x256 (no crop), batch-1 latency on ``--latency-images``
   test images (decoded beforehand, one warm-up, p50), all at ``--threads`` torch threads.
   Ours goes through ``model.jobs.fit.fit`` / ``model.jobs.evaluate.evaluate`` (default config);
   anomalib runs in a subprocess of its venv.
4. Scores every method's maps and image scores with ``model.reporting.metrics`` against the same
   masks (nearest-neighbour resized to 256 px), writes JSON after each method (so a partial
   run keeps what finished) and prints a markdown table with the ratios ours / anomalib.

``--train-limit`` / ``--test-limit`` run the same on a symlinked subset (smoke tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ablation import batch1_timings  # noqa: E402
from model.jobs.dataset import TestSample, list_images, list_test_set, read_mask  # noqa: E402
from model.jobs.evaluate import evaluate  # noqa: E402
from model.jobs.fit import fit  # noqa: E402
from model.method.backbone import create_feature_extractor  # noqa: E402
from model.method.config import FitConfig  # noqa: E402
from model.reporting import metrics  # noqa: E402
from model.runtime.inspector import Inspector, normalization  # noqa: E402

log = logging.getLogger("anomalib_side_by_side")

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "benchmarks" / "anomalib_runner.py"
PINS = {"torch": "2.14.1", "torchvision": "0.29.1"}
ARCH = "tf_efficientnet_lite2"
ALL_STAGES = (0, 1, 2, 3, 4)  # every timm feature stage: the state dict anomalib's extractor holds
# Issue 8's targets, as ours / anomalib PatchCore.
TARGETS = {"latency": 0.5, "fit": 0.1}


# ----------------------------------------------------------------------------- environment


def version_matches(found: str, pinned: str) -> bool:
    """Whether an installed version string is the pinned release (a local tag like ``+cpu`` is ignored)."""
    return found.split("+", 1)[0] == pinned


def venv_python(venv: Path) -> Path:
    """The interpreter of virtual environment ``venv``."""
    return venv / "bin" / "python"


def installed_versions(python: Path) -> dict[str, str]:
    """Versions of torch, torchvision and anomalib in the interpreter ``python`` (missing: absent)."""
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for name in ('torch', 'torchvision', 'anomalib', 'timm'):\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def ensure_anomalib_venv(venv: Path, anomalib_spec: str) -> dict[str, str]:
    """Create ``venv`` and install anomalib with the pinned torch pair if needed; returns versions.

    Raises ``RuntimeError`` when pip ends with another torch / torchvision than the pins.
    """
    python = venv_python(venv)
    if not python.exists():
        log.info("creating %s", venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    found = installed_versions(python)
    if "anomalib" not in found:
        pins = [f"{name}=={version}" for name, version in PINS.items()]
        log.info("pip install %s %s into %s", " ".join(pins), anomalib_spec, venv)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins, anomalib_spec], check=True)
        found = installed_versions(python)
    wrong = {n: found.get(n, "missing") for n, v in PINS.items() if not version_matches(found.get(n, ""), v)}
    if wrong:
        raise RuntimeError(f"pip replaced the pinned torch pair in {venv}: {wrong} (wanted {PINS})")
    return found


def export_weights(path: Path, probe_path: Path) -> tuple[list[float], list[float]]:
    """Save our embedded Lite2 weights as timm ``features_only`` keys; returns the input mean and std.

    ``probe_path`` gets a seeded input ``[1, 3, 256, 256]`` and our network's output at every
    stage, so the runner can check that anomalib's extractor computes the same features.
    """
    net = create_feature_extractor(ARCH, ALL_STAGES, "embedded").eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    x = torch.randn(1, 3, FitConfig().image_size, FitConfig().image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        probe = {f"stage{i}": f.contiguous() for i, f in zip(ALL_STAGES, net(x), strict=True)}
    save_file({"input": x, **probe}, str(probe_path))
    return normalization(net)


# ----------------------------------------------------------------------------- data


def pick_evenly(items: list[Any], n: int | None) -> list[Any]:
    """``n`` items spread evenly over ``items`` (all of them when ``n`` is None or not smaller)."""
    if n is None or n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def _link(src: Path, dst: Path) -> None:
    """Symlink ``dst`` to ``src`` (absolute), creating folders; an existing ``dst`` is kept."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        dst.symlink_to(src.resolve())


def subset_category(data: Path, dst: Path, train_limit: int | None, test_limit: int | None) -> Path:
    """An MVTec-layout folder of symlinks: ``train_limit`` good training images, ``test_limit``
    test images per defect type (masks alongside). Returns ``data`` itself when no limit is set.
    """
    if train_limit is None and test_limit is None:
        return data
    for f in pick_evenly(list_images(data / "train" / "good"), train_limit):
        _link(f, dst / "train" / "good" / f.name)
    samples, _ = list_test_set(data)
    for defect in sorted({s.defect for s in samples}):
        for s in pick_evenly([s for s in samples if s.defect == defect], test_limit):
            _link(s.path, dst / "test" / defect / s.path.name)
            if s.mask_path is not None:
                _link(s.mask_path, dst / "ground_truth" / defect / s.mask_path.name)
    return dst


def latency_files(samples: list[TestSample], n: int) -> list[Path]:
    """Every fourth test image, at most ``n`` (mixes good and defective; as benchmarks/ablation.py)."""
    return [s.path for s in samples][::4][:n]


# ----------------------------------------------------------------------------- metrics


def score_maps(scores: np.ndarray, maps: np.ndarray, samples: list[TestSample], size: int) -> dict[str, float | None]:
    """Image AUROC, pixel AUROC and AU-PRO of ``maps [N, size, size]`` with ``model.reporting.metrics``."""
    if maps.shape != (len(samples), size, size):
        raise ValueError(f"maps are {maps.shape}, expected {(len(samples), size, size)}")
    labels = np.array([s.label for s in samples])
    masks = np.stack([read_mask(s, size) for s in samples])
    return {
        "image_auroc": metrics.auroc(scores, labels),
        "pixel_auroc": metrics.auroc(maps.ravel(), masks.ravel()),
        "au_pro": metrics.au_pro(maps, masks),
    }


def latency_summary(samples_ms: list[float]) -> dict[str, Any]:
    """p50 and p95 of per-image ms, with every sample."""
    return {
        "p50": round(float(np.percentile(samples_ms, 50)), 2),
        "p95": round(float(np.percentile(samples_ms, 95)), 2),
        "samples": [round(s, 2) for s in samples_ms],
    }


# ----------------------------------------------------------------------------- methods


def run_ours(data: Path, category: str, workdir: Path, lat_files: list[Path]) -> dict[str, Any]:
    """Fit and evaluate our default config; fit seconds are the wall time of ``fit``."""
    config = FitConfig()
    start = time.perf_counter()
    report = fit(data, f"{category}-side-by-side", workdir / "artifacts", config)
    fit_s = time.perf_counter() - start
    inspector = Inspector.from_artifact(report.artifact)
    ev = evaluate(inspector, data, eval_size=config.image_size)
    return {
        "method": "ours",
        "fit_seconds": round(fit_s, 2),
        "fit_stage_seconds": report.seconds,
        "latency_ms": latency_summary(batch1_timings(inspector, lat_files)[0]),
        "image_auroc": ev["image_auroc"],
        "pixel_auroc": ev["pixel_auroc"],
        "au_pro": ev["au_pro"],
        "bank_size": report.bank_size,
        "n_fit_images": report.n_fit,
        "n_holdout_images": report.n_holdout,
        "config": "default (model/config.py): NNS layers 2+3 (strides 8+16, 1% coreset), Gaussian layers 1+2",
    }


def anomalib_job(method: str, args: argparse.Namespace, data: Path, weights: Path,
                 norm: tuple[list[float], list[float]], samples: list[TestSample],
                 lat_files: list[Path]) -> dict[str, Any]:
    """The job file for ``anomalib_runner.py``."""
    job: dict[str, Any] = {
        "method": method,
        "category": args.category,
        "data": str(data.resolve()),
        "arch": ARCH,
        "weights": str(weights.resolve()),
        "probe": str(weights.with_suffix(".probe.safetensors").resolve()),
        "mean": norm[0],
        "std": norm[1],
        "image_size": FitConfig().image_size,
        "batch_size": args.anomalib_batch_size,
        "threads": args.threads,
        "test_files": [str(s.path.resolve()) for s in samples],
        "latency_files": [str(f.resolve()) for f in lat_files],
        "out_dir": str((args.workdir / method).resolve()),
    }
    if method == "patchcore":
        job.update(layers=args.patchcore_layers, coreset_ratio=args.coreset_ratio)
    else:
        job.update(layers=args.padim_layers, n_features=args.padim_features)
    return job


def run_anomalib(job: dict[str, Any], venv: Path, samples: list[TestSample]) -> dict[str, Any]:
    """Run ``anomalib_runner.py`` on ``job`` in anomalib's venv and score its maps with our metrics."""
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    job_file = out_dir / "job.json"
    job_file.write_text(json.dumps(job, indent=2))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(job["threads"]), MKL_NUM_THREADS=str(job["threads"]))
    subprocess.run([str(venv_python(venv)), str(RUNNER), str(job_file)], check=True, env=env)
    result = json.loads((out_dir / "result.json").read_text())
    result["latency_ms"] = latency_summary(result.pop("latency_samples_ms"))
    maps = np.load(out_dir / "maps.npy")
    scores = np.load(out_dir / "scores.npy")
    result.update(score_maps(scores, maps, samples, job["image_size"]))
    result["layers"] = job["layers"]
    result.update({k: job[k] for k in ("coreset_ratio", "n_features") if k in job})
    return result


# ----------------------------------------------------------------------------- report


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Ours / each anomalib method for fit seconds and latency p50 (methods present only)."""
    ours = rows.get("ours")
    out: dict[str, dict[str, float]] = {}
    if ours is None:
        return out
    for name, row in rows.items():
        if name != "ours":
            out[name] = {
                "fit": round(ours["fit_seconds"] / row["fit_seconds"], 4),
                "latency": round(ours["latency_ms"]["p50"] / row["latency_ms"]["p50"], 4),
            }
    return out


def target_verdicts(ratio: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Issue 8's targets against anomalib PatchCore: each ratio, its target and whether it is met."""
    pc = ratio.get("patchcore")
    if pc is None:
        return {}
    return {k: {"ratio": pc[k], "target": t, "met": pc[k] <= t} for k, t in TARGETS.items()}


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """The per-method table and the ratios ours / anomalib, as markdown."""
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [
        "| method | fit s | latency ms, b1 p50 (p95) | image AUROC | pixel AUROC | AU-PRO |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lat = r["latency_ms"]
        lines.append(
            f"| {name} | {r['fit_seconds']:.1f} | {lat['p50']:.1f} ({lat['p95']:.1f}) | "
            f"{fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | {fmt(r['au_pro'])} |"
        )
    rat = ratios(rows)
    if rat:
        lines += ["", "| ours / | fit | latency |", "|---|---|---|"]
        lines += [f"| {name} | {v['fit']:.3f}x | {v['latency']:.3f}x |" for name, v in rat.items()]
    return "\n".join(lines)


def write_report(path: Path, meta: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    """JSON with the run's settings, every finished method, the ratios and the target verdicts."""
    rat = ratios(rows)
    report = {**meta, "methods": rows, "ratios_ours_over": rat, "targets_vs_patchcore": target_verdicts(rat)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module doc)."""
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="MVTec-style category folder")
    p.add_argument("--category", default="bottle")
    p.add_argument("--out", type=Path, default=Path("runs/anomalib_side_by_side.json"))
    p.add_argument("--workdir", type=Path, default=Path("runs/anomalib_side_by_side"))
    p.add_argument("--venv", type=Path, default=Path("runs/anomalib-venv"))
    p.add_argument("--anomalib-spec", default="anomalib", help="pip requirement for anomalib")
    p.add_argument("--methods", default="ours,padim,patchcore", help="run in this order, one at a time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-images", type=int, default=20)
    p.add_argument("--train-limit", type=int, help="use this many train/good images (smoke test)")
    p.add_argument("--test-limit", type=int, help="use this many test images per defect type (smoke test)")
    p.add_argument("--coreset-ratio", type=float, default=0.1, help="PatchCore (anomalib's default 0.1)")
    p.add_argument("--patchcore-layers", type=ints, default=[2, 3], help="timm out_indices (strides 8, 16)")
    p.add_argument("--padim-layers", type=ints, default=[1, 2, 3], help="timm out_indices (strides 4, 8, 16)")
    p.add_argument("--padim-features", type=int, default=100, help="PaDiM's random dims (of 192)")
    p.add_argument("--anomalib-batch-size", type=int, default=32, help="anomalib's train batch size (its default)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    versions = ensure_anomalib_venv(args.venv, args.anomalib_spec) if set(methods) - {"ours"} else {}
    data = subset_category(args.data, args.workdir / "subset", args.train_limit, args.test_limit)
    weights = args.workdir / f"{ARCH}_embedded_features.safetensors"
    norm = export_weights(weights, weights.with_suffix(".probe.safetensors"))
    samples, _ = list_test_set(data)
    lat_files = latency_files(samples, args.latency_images)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": str(args.data),
        "n_train_images": len(list_images(data / "train" / "good")),
        "n_test_images": len(samples),
        "n_latency_images": len(lat_files),
        "threads": args.threads,
        "image_size": FitConfig().image_size,
        "backbone": f"{ARCH}, embedded offline ImageNet weights (same tensors for every method)",
        "anomalib_venv_versions": versions,
        "ours_versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "cpu_count": os.cpu_count(),
    }
    rows: dict[str, dict[str, Any]] = {}
    for method in methods:
        log.info("running %s", method)
        if method == "ours":
            rows[method] = run_ours(data, args.category, args.workdir, lat_files)
        else:
            job = anomalib_job(method, args, data, weights, norm, samples, lat_files)
            rows[method] = run_anomalib(job, args.venv, samples)
        write_report(args.out, meta, rows)
        log.info("%s done: %s", method, json.dumps({k: rows[method][k] for k in ("fit_seconds", "image_auroc")}))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
