"""Evaluate an artifact on an MVTec-style test folder, through the server's code path.

Images are read with ``read_image`` (the server's decoder), scored by ``Inspector.inspect``
(the server's inference object) and judged by ``InspectionResult.verdict`` (the server's
verdict). Metrics are computed at the model input resolution by default (masks resized by
nearest neighbour), as anomalib reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.jobs.dataset import GOOD, TestSample, check_both_classes, file_sha256, list_test_set, read_mask
from model.reporting import metrics, plots
from model.reporting.progress import ProgressFactory, silent_progress
from model.runtime.imageio import read_image, resize_rgb
from model.runtime.inspector import Inspector

log = logging.getLogger(__name__)


@dataclass
class ScoredSet:
    """The verdicts of a test set at the evaluation size ``S``."""

    samples: list[TestSample]
    scores: np.ndarray  # [N] float64
    flagged: np.ndarray  # [N] bool, the verdict's is_anomalous
    maps: np.ndarray | None  # [N, S, S] float32, with ground-truth masks only
    pred_masks: np.ndarray | None  # [N, S, S] bool, the verdict's mask
    gt_masks: np.ndarray | None  # [N, S, S] bool
    stage_ms: dict[str, float] = field(default_factory=dict)  # summed over batches
    wall_s: float = 0.0

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples])


def fit_defect_hashes(inspector: Inspector) -> set[str]:
    """SHA-256 of the labelled defect images the artifact was fitted with (empty without)."""
    return set(inspector.manifest.training.defect_hashes)


def select_samples(inspector: Inspector, data: Path | str, exclude: set[str] | None) -> tuple[list[TestSample], bool, int]:
    """The test set without the images in ``exclude`` (default: the fit's labelled defects);
    returns the samples, whether there are masks, and how many were listed before excluding."""
    samples, has_masks = list_test_set(data)
    exclude = fit_defect_hashes(inspector) if exclude is None else exclude
    n_listed = len(samples)
    if exclude:
        samples = [s for s in samples if file_sha256(s.path) not in exclude]
        check_both_classes(samples, f"{data}/test without the fit's {n_listed - len(samples)} defect images")
    return samples, has_masks, n_listed


def score_test_set(inspector: Inspector, samples: list[TestSample], size: int, has_masks: bool,
                   batch_size: int, progress: ProgressFactory) -> ScoredSet:
    """Every sample's verdict at ``size x size``, in batches of ``batch_size``."""
    n = len(samples)
    out = ScoredSet(samples, np.zeros(n), np.zeros(n, bool), *(
        (np.zeros((n, size, size), np.float32), np.zeros((n, size, size), bool), np.zeros((n, size, size), bool))
        if has_masks else (None, None, None)))
    bar = progress("evaluate", n)
    wall = time.perf_counter()
    for start in range(0, n, batch_size):
        chunk = samples[start : start + batch_size]
        results = inspector.inspect([read_image(str(s.path)) for s in chunk])
        for k, (s, res) in enumerate(zip(chunk, results, strict=True), start):
            verdict = res.verdict((size, size), max_regions=0)
            out.scores[k], out.flagged[k] = verdict.score, verdict.is_anomalous
            if has_masks:
                out.maps[k], out.pred_masks[k], out.gt_masks[k] = verdict.anomaly_map, verdict.mask, read_mask(s, size)
        for stage, ms in results[0].timings_ms.items():
            out.stage_ms[stage] = out.stage_ms.get(stage, 0.0) + ms
        bar.update(len(chunk))
    bar.close()
    out.wall_s = time.perf_counter() - wall
    return out


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
    samples, has_masks, n_listed = select_samples(inspector, data, exclude)
    size = eval_size or inspector.config.image_size
    scored = score_test_set(inspector, samples, size, has_masks, batch_size, progress)
    report = summary(inspector, scored, size)
    report["n_excluded"] = n_listed - len(samples)
    report["per_defect"] = per_defect(scored)
    if output_dir is not None:
        report["plots"] = write_plots(Path(output_dir), scored, inspector, worst_cases)
    return report


def summary(inspector: Inspector, scored: ScoredSet, size: int) -> dict[str, Any]:
    """The report's top level: what was evaluated, the metrics, F1 at the calibrated thresholds,
    timings and the per-image verdicts."""
    labels, n = scored.labels, len(scored.samples)
    image_counts = metrics.confusion(scored.flagged, labels)
    return {
        "category": inspector.manifest.category,
        "artifact_id": inspector.artifact_id,
        "backbone": inspector.config.backbone.arch,
        "weights": inspector.config.backbone.weights,
        "resolution": size,
        "crop": "none",
        "device": str(inspector.device),
        **metrics.metric_block(scored.scores, labels, scored.maps, scored.gt_masks),
        "image_f1": image_counts["f1"],
        "image_counts": image_counts,
        "pixel_f1": metrics.confusion(scored.pred_masks, scored.gt_masks)["f1"] if scored.maps is not None else None,
        "thresholds": inspector.thresholds.to_dict(),
        "n_images": n,
        "n_defective": int(labels.sum()),
        "timings_ms_per_image": {k: round(v / n, 3) for k, v in scored.stage_ms.items()},
        "wall_ms_per_image": round(scored.wall_s * 1000 / n, 3),
        "images": [
            {"file": str(s.path), "defect": s.defect, "score": float(sc), "is_anomalous": bool(flag)}
            for s, sc, flag in zip(scored.samples, scored.scores, scored.flagged, strict=True)
        ],
    }


def per_defect(scored: ScoredSet) -> dict[str, dict]:
    """Metrics of each defect type against the good images, with its recall at the threshold."""
    samples, labels = scored.samples, scored.labels
    blocks = {}
    for defect in sorted({s.defect for s in samples} - {GOOD}):
        sel = np.array([s.defect in (GOOD, defect) for s in samples])
        pick = (lambda a: a[sel] if a is not None else None)  # noqa: E731
        block = metrics.metric_block(scored.scores[sel], labels[sel], pick(scored.maps), pick(scored.gt_masks))
        block["n"] = int(sum(s.defect == defect for s in samples))
        block["recall_at_threshold"] = float(np.mean(scored.flagged[labels.astype(bool) & sel]))
        blocks[defect] = block
    return blocks


def write_plots(out: Path, scored: ScoredSet, inspector: Inspector, worst_cases: int) -> list[str]:
    """ROC curves, score histogram, PRO curve and a worst-case overlay grid, as PNG files."""
    out.mkdir(parents=True, exist_ok=True)
    scores, labels, maps, masks = scored.scores, scored.labels, scored.maps, scored.gt_masks
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    curves = {"image": (fpr, tpr, metrics.auroc(scores, labels))}
    written = []
    if maps is not None and masks is not None:
        pfpr, ptpr, _ = metrics.roc_curve(maps.ravel(), masks.ravel())
        curves["pixel"] = (pfpr, ptpr, metrics.auroc(maps.ravel(), masks.ravel()))
        pro_fpr, pro = metrics.pro_curve(maps, masks)
        written.append(plots.plot_pro(out / "pro_curve.png", pro_fpr, pro, metrics.au_pro(maps, masks)))
    written.append(plots.plot_roc(out / "roc.png", curves, "ROC"))
    written.append(plots.plot_score_histogram(out / "score_histogram.png", scores[labels == 0], scores[labels == 1],
                                              inspector.thresholds.image, "image scores"))
    rows = worst_rows(scored.samples, scores, labels, inspector, worst_cases)
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
        verdict = inspector.inspect([image])[0].verdict(max_regions=0)
        rows.append(
            {
                "image": resize_rgb(image, size),
                "anomaly_map": verdict.anomaly_map,
                "gt_mask": read_mask(s, size) if s.mask_path is not None else None,
                "pred_mask": verdict.mask,
                "title": f"{s.defect}/{s.path.name} score={scores[i]:.3g} (t={verdict.threshold:.3g})",
            }
        )
    return rows
