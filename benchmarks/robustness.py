"""Accuracy when parts are not aligned: evaluate fitted artifacts on rotated / shifted test images.

    .venv/bin/python benchmarks/robustness.py --data ../shared/data/mvtec_ad/bottle \
        --artifacts runs/ablation_artifacts/bottle-nns runs/ablation_artifacts/bottle-nns_x_gaussian

The test images and their masks are transformed together (random rotation in
[-deg, deg] and shift up to ``shift`` of the size, seeded, reflect border for the image)
into a temporary MVTec-layout copy; the artifacts were fitted on the untouched train set.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.jobs.dataset import list_test_set  # noqa: E402
from model.jobs.evaluate import evaluate  # noqa: E402
from model.runtime.inspector import Inspector  # noqa: E402


def transformed_copy(data: Path, out: Path, degrees: float, shift: float, seed: int) -> Path:
    """Write rotated/shifted test images and masks of ``data`` under ``out`` (same layout)."""
    rng = np.random.default_rng(seed)
    samples, _ = list_test_set(data)
    for s in samples:
        img = cv2.imread(str(s.path), cv2.IMREAD_UNCHANGED)
        h, w = img.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-degrees, degrees), 1.0)
        m[:, 2] += rng.uniform(-shift, shift, 2) * (w, h)
        dst = out / "test" / s.defect / s.path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst), cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT))
        if s.mask_path is not None:
            mask = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE)
            mdst = out / "ground_truth" / s.defect / s.mask_path.name
            mdst.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mdst), cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--artifacts", nargs="+", required=True)
    p.add_argument("--settings", default="0:0,10:0,0:0.05,15:0.05", help="degrees:shift pairs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for setting in args.settings.split(","):
        deg, shift = (float(v) for v in setting.split(":"))
        with tempfile.TemporaryDirectory() as tmp:
            data = transformed_copy(Path(args.data), Path(tmp), deg, shift, seed=0)
            for art in args.artifacts:
                ev = evaluate(Inspector.from_artifact(art), data)
                row = {"artifact": Path(art).name, "degrees": deg, "shift": shift,
                       **{k: ev[k] for k in ("image_auroc", "pixel_auroc", "au_pro")}}
                results.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
