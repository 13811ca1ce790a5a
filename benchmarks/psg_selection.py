"""Could a few labelled defects decide PSG per category? An offline simulation.

    .venv/bin/python benchmarks/psg_selection.py --data ../shared/data/mvtec_ad/bottle \
        --base runs/ablation_artifacts/bottle-nns_x_gaussian --psg runs/ablation_artifacts/bottle-psg \
        --per-type 2 --trials 40

Two fitted artifacts of one category (without and with PSG) score every test image and the
fit's held-out good images once. Each trial then draws ``--per-type`` labelled defects per
defect type as a validation set (with the held-out goods), computes image AUROC, pixel
AUROC and AU-PRO of both artifacts there, and applies each selection rule. The deltas on
the remaining test images show what the choice is worth.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.artifact.store import read_manifest  # noqa: E402
from model.jobs.dataset import list_test_set, read_mask  # noqa: E402
from model.jobs.fit import inspect_files, prefer_psg  # noqa: E402
from model.reporting.metrics import metric_block  # noqa: E402
from model.reporting.progress import silent_progress  # noqa: E402
from model.runtime.inspector import Inspector  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "au_pro")
RULES = {
    # the fit's rule, on deltas: PSG's block against an all-zero base
    "mean of the three > 0": lambda d: prefer_psg(dict.fromkeys(METRICS, 0.0), dict(zip(METRICS, d.tolist()))),
    "pixel AUROC > 0": lambda d: d[1] > 0,
    "none worse, >= 2 better": lambda d: bool((d >= 0).all() and (d > 0).sum() >= 2),
}


def artifact_maps(artifact: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Final maps ``[N, S, S]`` (at the model input size) and image scores ``[N]`` of ``files``."""
    scores, maps = inspect_files(Inspector.from_artifact(artifact, "cpu"), files, silent_progress, "maps")
    return maps, scores


def metric_row(maps: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Image AUROC, pixel AUROC and AU-PRO (``metrics.metric_block``) as an array."""
    return np.array(list(metric_block(scores, labels, maps, masks).values()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--base", required=True, type=Path, help="artifact without PSG")
    p.add_argument("--psg", required=True, type=Path, help="artifact with PSG")
    p.add_argument("--per-type", type=int, default=2)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)

    samples, _ = list_test_set(args.data)
    manifest = read_manifest(args.base)
    holdout, size = manifest.training.holdout_files, manifest.config.image_size
    files = [s.path for s in samples] + [Path(args.data) / "train" / "good" / f for f in holdout]
    defect = np.array([s.defect for s in samples])
    masks = np.stack([read_mask(s, size) for s in samples] + [np.zeros((size, size), bool)] * len(holdout))
    labels = np.r_[defect != "good", np.zeros(len(holdout), bool)]
    runs = {name: artifact_maps(path, files) for name, path in (("base", args.base), ("psg", args.psg))}

    n_test, types = len(samples), sorted(set(defect) - {"good"})
    hold_idx = n_test + np.arange(len(holdout))
    rng = np.random.default_rng(0)
    val_deltas, test_deltas = [], []
    for _ in range(args.trials):
        val = np.concatenate([rng.choice(np.flatnonzero(defect == t), args.per_type, replace=False)
                              for t in types])
        splits = (np.r_[val, hold_idx], np.setdiff1d(np.arange(n_test), val))
        row = {name: [metric_row(maps[i], scores[i], labels[i], masks[i]) for i in splits]
               for name, (maps, scores) in runs.items()}
        val_deltas.append(row["psg"][0] - row["base"][0])
        test_deltas.append(row["psg"][1] - row["base"][1])
    val_deltas, test_deltas = np.array(val_deltas), np.array(test_deltas)
    picks = {rule: int(sum(fn(d) for d in val_deltas)) for rule, fn in RULES.items()}
    print(f"{args.trials} trials, {args.per_type} defects per type ({len(types)} types) + {len(holdout)} held-out goods")
    print("mean validation delta (PSG - base), image / pixel AUROC / AU-PRO:", val_deltas.mean(0).round(4))
    print("mean test delta on the rest:", test_deltas.mean(0).round(4))
    for rule, n in picks.items():
        print(f"rule '{rule}': keeps PSG in {n}/{args.trials} trials")
    if args.out:
        args.out.write_text(json.dumps({"picks": picks, "val_deltas": val_deltas.tolist(),
                                        "test_deltas": test_deltas.tolist()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
