"""Fit + evaluate the ablation rows of one category and print a markdown table.

    .venv/bin/python benchmarks/ablation.py --data ../shared/data/mvtec_ad/bottle --category bottle \
        --rows nns,gaussian,nns_x_gaussian --out runs/ablation_bottle.json

Each row is the default config with the overrides in ``model.method.config.ABLATIONS``. Fit time
is wall time on this machine; latency is the model path per image at batch 1.

``--defects-per-type K`` draws K labelled defects per defect type from the test set (seeded)
and gives them to every row's fit (``fit --defects``); every row is then evaluated on the
rest of the test set, so the rows stay comparable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.jobs.dataset import TestSample, file_sha256, list_defects  # noqa: E402
from model.jobs.evaluate import evaluate  # noqa: E402
from model.jobs.fit import fit  # noqa: E402
from model.jobs.host import keep_freed_memory  # noqa: E402
from model.method.config import ABLATIONS, FitConfig  # noqa: E402
from model.runtime.imageio import read_image  # noqa: E402
from model.runtime.inspector import Inspector  # noqa: E402


def batch1_timings(
    inspector: Inspector, files: list[Path], repeats: int = 1
) -> tuple[list[float], dict[str, list[float]]]:
    """Wall ms of ``inspector.inspect`` per image at batch 1, and each stage's ms, over ``files``
    (decoded beforehand, so decode is not included; one warm-up call)."""
    images = [read_image(str(f)) for f in files]
    inspector.inspect(images[:1])  # warm-up
    stages: dict[str, list[float]] = {}
    totals = []
    for _ in range(repeats):
        for im in images:
            t = time.perf_counter()
            res = inspector.inspect([im])[0]
            totals.append((time.perf_counter() - t) * 1000)
            for k, v in res.timings_ms.items():
                stages.setdefault(k, []).append(v)
    return totals, stages


def batch1_latency(inspector: Inspector, files: list[Path], repeats: int = 1) -> dict[str, float]:
    """Mean per-stage ms and total p50 / p95 at batch 1 over ``files`` (``batch1_timings``)."""
    totals, stages = batch1_timings(inspector, files, repeats)
    out = {k: round(float(np.mean(v)), 2) for k, v in stages.items()}
    out["total_p50"] = round(float(np.percentile(totals, 50)), 2)
    out["total_p95"] = round(float(np.percentile(totals, 95)), 2)
    return out


def draw_defects(data: str, per_type: int, seed: int) -> list[TestSample]:
    """``per_type`` labelled defects of each type of ``<data>/test``, drawn with ``seed``."""
    if per_type <= 0:
        return []
    rng = np.random.default_rng(seed)
    by_type: dict[str, list[TestSample]] = {}
    for d in list_defects(data):
        by_type.setdefault(d.defect, []).append(d)
    return [group[i] for group in by_type.values() for i in sorted(rng.choice(len(group), per_type, replace=False))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--rows", default=",".join(ABLATIONS))
    p.add_argument("--artifacts", default="runs/ablation_artifacts")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-images", type=int, default=20)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override for every row")
    p.add_argument("--label", default="", help="suffix of the row names (with --set)")
    p.add_argument("--defects-per-type", type=int, default=0, help="labelled defects per type given to the fit")
    p.add_argument("--defect-seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does before a fit
    rows = []
    test_files = sorted((Path(args.data) / "test").glob("*/*"))[:: 4][: args.latency_images]
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    defects = draw_defects(args.data, args.defects_per_type, args.defect_seed)
    exclude = {file_sha256(d.path) for d in defects}
    for row in args.rows.split(","):
        name = row + args.label
        config = FitConfig().with_overrides({**ABLATIONS[row], **extra})
        report = fit(args.data, f"{args.category}-{name}", args.artifacts, config, defects=defects)
        inspector = Inspector.from_artifact(report.artifact)
        ev = evaluate(inspector, args.data, exclude=exclude)
        row = {
            "row": name,
            "image_auroc": ev["image_auroc"],
            "pixel_auroc": ev["pixel_auroc"],
            "au_pro": ev["au_pro"],
            "image_f1": ev["image_f1"],
            "fit_seconds": report.seconds,
            "artifact_mb": round(report.artifact_bytes / 1e6, 1),
            "bank_size": report.bank_size,
            "latency_ms_batch1": batch1_latency(inspector, test_files),
            "per_defect": ev["per_defect"],
            "n_images": ev["n_images"],
            "defects": [f"{d.defect}/{d.path.name}" for d in defects],
            "psg": report.psg,
            "psg_selection": report.psg_selection,
        }
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("row", "image_auroc", "pixel_auroc", "au_pro")}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print("| row | image AUROC | pixel AUROC | AU-PRO | fit s | artifact MB | latency ms (b=1, p50) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"| {r['row']} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | {fmt(r['au_pro'])} | "
              f"{r['fit_seconds']['total']:.1f} | {r['artifact_mb']} | {r['latency_ms_batch1']['total_p50']} |")


if __name__ == "__main__":
    main()
