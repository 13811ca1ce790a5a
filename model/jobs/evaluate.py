"""Evaluate an artifact on an MVTec-style test folder, through the server's code path.

Images are read with ``read_image`` (the server's decoder) and scored by
``Inspector.inspect`` (the server's inference object). Metrics are computed at the model
input resolution by default (masks resized by nearest neighbour), as anomalib reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.reporting import metrics, plots
from model.jobs.dataset import GOOD, TestSample, check_both_classes, file_sha256, list_test_set, read_mask
from model.runtime.imageio import read_image, resize_rgb
from model.runtime.inspector import Inspector
from model.method.amc import resize_map
from model.jobs.progress import ProgressFactory, silent_progress

log = logging.getLogger(__name__)


def fit_defect_hashes(inspector: Inspector) -> set[str]:
    """SHA-256 of the labelled defect images the artifact was fitted with (empty without)."""
    return set((inspector.manifest.get("training", {}).get("defects") or {}).get("sha256", []))


def evaluate(
    inspector: Inspector,
    data: Path | str,
    output_dir: Path | str | None = None,
    eval_size: int | None = None,
    batch_size: int = 8,
    worst_cases: int = 8,
    progress: ProgressFactory = silent_progress,
    exclude: set[str] | None = None,
) -> dict[str, Any]:
    """Metrics of ``inspector`` on ``<data>/test`` (JSON-ready dict); plots go to ``output_dir``.

    Test images whose SHA-256 is in ``exclude`` are left out; by default, those the artifact
    was fitted with as labelled defects (``fit --defects``), which must not be scored twice.
    """
    samples, has_masks = list_test_set(data)
    exclude = fit_defect_hashes(inspector) if exclude is None else exclude
    n_listed = len(samples)
    if exclude:
        samples = [s for s in samples if file_sha256(s.path) not in exclude]
        check_both_classes(samples, f"{data}/test without the fit's {n_listed - len(samples)} defect images")
    size = eval_size or inspector.config.image_size
    n = len(samples)
    scores = np.zeros(n)
    maps = np.zeros((n, size, size), dtype=np.float32) if has_masks else None
    masks = np.zeros((n, size, size), dtype=bool) if has_masks else None
    stage_ms: dict[str, float] = {}
    bar = progress("evaluate", n)
    wall = time.perf_counter()
    for start in range(0, n, batch_size):
        chunk = samples[start : start + batch_size]
        images = [read_image(str(s.path)) for s in chunk]
        for i, (s, res) in enumerate(zip(chunk, inspector.inspect(images), strict=True)):
            k = start + i
            scores[k] = res.score
            if maps is not None and masks is not None:
                maps[k], masks[k] = resize_map(res.anomaly_map, size, size), read_mask(s, size)
        for stage, ms in res.timings_ms.items():
            stage_ms[stage] = stage_ms.get(stage, 0.0) + ms
        bar.update(len(chunk))
    bar.close()
    wall = time.perf_counter() - wall
    labels = np.array([s.label for s in samples])
    thresholds = inspector.thresholds
    image_counts = metrics.binary_counts(scores, labels, thresholds.image)
    report: dict[str, Any] = {
        "category": inspector.manifest.get("category"),
        "artifact_id": inspector.artifact_id,
        "backbone": inspector.config.backbone.arch,
        "weights": inspector.config.backbone.weights,
        "resolution": size,
        "crop": "none",
        "device": str(inspector.device),
        **metrics.metric_block(scores, labels, maps, masks),
        "image_f1": image_counts["f1"],
        "image_counts": image_counts,
        "pixel_f1": (
            metrics.binary_counts(maps.ravel(), masks.ravel(), thresholds.pixel)["f1"]
            if maps is not None and masks is not None
            else None
        ),
        "thresholds": thresholds.to_dict(),
        "n_images": n,
        "n_excluded": n_listed - n,
        "n_defective": int(labels.sum()),
        "per_defect": {},
        "timings_ms_per_image": {k: round(v / n, 3) for k, v in stage_ms.items()},
        "wall_ms_per_image": round(wall * 1000 / n, 3),
        "images": [
            {"file": str(s.path), "defect": s.defect, "score": float(sc), "is_anomalous": bool(sc > thresholds.image)}
            for s, sc in zip(samples, scores, strict=True)
        ],
    }
    for defect in sorted({s.defect for s in samples} - {GOOD}):
        sel = np.array([s.defect in (GOOD, defect) for s in samples])
        block = metrics.metric_block(
            scores[sel], labels[sel], maps[sel] if maps is not None else None, masks[sel] if masks is not None else None
        )
        block["n"] = int(sum(s.defect == defect for s in samples))
        block["recall_at_threshold"] = float(np.mean(scores[labels.astype(bool) & sel] > thresholds.image))
        report["per_defect"][defect] = block
    if output_dir is not None:
        report["plots"] = write_plots(Path(output_dir), samples, scores, labels, maps, masks, inspector, worst_cases)
    return report


def write_plots(
    out: Path,
    samples: Sequence[TestSample],
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | None,
    masks: np.ndarray | None,
    inspector: Inspector,
    worst_cases: int,
) -> list[str]:
    """ROC curves, score histogram, PRO curve and a worst-case overlay grid, as PNG files."""
    out.mkdir(parents=True, exist_ok=True)
    t = inspector.thresholds
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    curves = {"image": (fpr, tpr, metrics.auroc(scores, labels))}
    written = []
    if maps is not None and masks is not None:
        pfpr, ptpr, _ = metrics.roc_curve(maps.ravel(), masks.ravel())
        curves["pixel"] = (pfpr, ptpr, metrics.auroc(maps.ravel(), masks.ravel()))
        pro_fpr, pro = metrics.pro_curve(maps, masks)
        written.append(plots.plot_pro(out / "pro_curve.png", pro_fpr, pro, metrics.au_pro(maps, masks)))
    written.append(plots.plot_roc(out / "roc.png", curves, "ROC"))
    written.append(
        plots.plot_score_histogram(
            out / "score_histogram.png", scores[labels == 0], scores[labels == 1], t.image, "image scores"
        )
    )
    rows = worst_rows(samples, scores, labels, inspector, worst_cases)
    written.append(plots.plot_worst_cases(out / "worst_cases.png", rows))
    return [str(p) for p in written]


def worst_rows(
    samples: Sequence[TestSample],
    scores: np.ndarray,
    labels: np.ndarray,
    inspector: Inspector,
    count: int,
) -> list[dict[str, Any]]:
    """The lowest-scored defective and highest-scored good images, re-inspected, as plot rows."""
    size = inspector.config.image_size
    defective = [int(i) for i in np.argsort(scores) if labels[i] == 1][: (count + 1) // 2]
    good = [int(i) for i in np.argsort(-scores) if labels[i] == 0][: count // 2]
    rows = []
    for i in defective + good:
        s = samples[i]
        image = read_image(str(s.path))
        res = inspector.inspect([image])[0]
        rows.append(
            {
                "image": resize_rgb(image, size),
                "anomaly_map": res.anomaly_map,
                "gt_mask": read_mask(s, size) if s.mask_path is not None else None,
                "pred_mask": res.mask,
                "title": f"{s.defect}/{s.path.name} score={scores[i]:.3g} (t={inspector.thresholds.image:.3g})",
            }
        )
    return rows
