"""Evaluation plots written as PNG files (matplotlib, no display needed).

Every function takes the output ``path``, writes one figure there and returns the path.
Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``),
not ``pyplot``: importing this module selects no backend and touches no global pyplot
state, and the figures, never registered with pyplot, are freed with their last reference
(so plotting from several threads is safe).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

MAX_CURVE_POINTS = 5000  # curves with more points are thinned before plotting


def _thin(x: np.ndarray, y: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` evenly spaced points of the curve ``x [K], y [K]``, first and last kept."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.size <= max_points:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(np.int64))
    return x[idx], y[idx]


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG (creating parent folders); Agg renders it, chosen by the format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    log.debug("wrote %s", path)
    return path


def plot_roc(
    path: str | Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]],
    title: str = "ROC",
) -> Path:
    """Several named ROC curves on one axes; ``curves[name] = (fpr [K], tpr [K], auc)``."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for name, (fpr, tpr, auc) in curves.items():
        fx, ty = _thin(fpr, tpr)
        label = f"{name} (AUROC {auc:.4f})" if auc is not None else name
        ax.plot(fx, ty, label=label, lw=1.5)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower right")
    return _save(fig, path)


def plot_score_histogram(
    path: str | Path,
    good_scores: np.ndarray,
    defect_scores: np.ndarray,
    threshold: float | None = None,
    title: str = "scores",
) -> Path:
    """Overlaid histograms of ``good_scores [N]`` and ``defect_scores [M]`` with the threshold line."""
    good = np.asarray(good_scores, dtype=np.float64).ravel()
    defect = np.asarray(defect_scores, dtype=np.float64).ravel()
    both = np.concatenate([good, defect])
    if threshold is not None:
        both = np.append(both, threshold)
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if good.size:
        ax.hist(good, bins=bins, alpha=0.6, color="tab:green", label=f"good (n={good.size})")
    if defect.size:
        ax.hist(defect, bins=bins, alpha=0.6, color="tab:red", label=f"defective (n={defect.size})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score", ylabel="count", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_pro(
    path: str | Path,
    fpr: np.ndarray,
    pro: np.ndarray,
    au_pro: float | None,
    fpr_limit: float = 0.3,
) -> Path:
    """PRO against FPR (``fpr [K], pro [K]``) with the integration limit marked."""
    fx, py = _thin(fpr, pro)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    label = f"PRO (AU-PRO@{fpr_limit:g} {au_pro:.4f})" if au_pro is not None else "PRO"
    ax.plot(fx, py, lw=1.5, label=label)
    ax.axvline(fpr_limit, color="grey", ls="--", lw=1, label=f"FPR limit {fpr_limit:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="per-region overlap")
    ax.set_title("PRO curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def _overlay(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` blend of ``image`` and the jet-coloured, min-max scaled ``anomaly_map [H, W]``."""
    a = np.asarray(anomaly_map, dtype=np.float32)
    span = float(a.max() - a.min())
    a8 = ((a - a.min()) / span * 255).astype(np.uint8) if span > 0 else np.zeros(a.shape, np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(a8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(np.ascontiguousarray(image, dtype=np.uint8), 1 - alpha, heat, alpha, 0)


def _mask_pair(gt_mask: np.ndarray | None, pred_mask: np.ndarray) -> np.ndarray:
    """Ground truth (left, white) next to the prediction (right, red), RGB uint8 ``[H, 2W+gap, 3]``."""
    pred = np.asarray(pred_mask, dtype=bool)
    h, w = pred.shape
    gt = np.zeros((h, w), bool) if gt_mask is None else np.asarray(gt_mask, dtype=bool)
    gap = max(2, w // 50)
    out = np.full((h, 2 * w + gap, 3), 128, np.uint8)
    out[:, :w] = 0
    out[:, :w][gt] = 255
    out[:, w + gap :] = 0
    out[:, w + gap :][pred] = (255, 40, 40)
    return out


def plot_worst_cases(path: str | Path, rows: list[dict]) -> Path:
    """Grid with one row per case: image, heatmap overlay, ground truth | predicted mask.

    Each row: ``image`` RGB uint8 ``[H, W, 3]``, ``anomaly_map`` float ``[H, W]``,
    ``gt_mask`` bool ``[H, W]`` or ``None``, ``pred_mask`` bool ``[H, W]``, ``title`` str.
    """
    n = max(len(rows), 1)
    fig = Figure(figsize=(10, 3.2 * n))
    axes = fig.subplots(n, 3, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 2]})
    for r, row in enumerate(rows):
        image = np.asarray(row["image"])
        gt_text = "ground truth | predicted" if row.get("gt_mask") is not None else "(no ground truth) | predicted"
        panels = [
            (image, row.get("title", "")),
            (_overlay(image, row["anomaly_map"]), "anomaly map"),
            (_mask_pair(row.get("gt_mask"), row["pred_mask"]), gt_text),
        ]
        for c, (img, text) in enumerate(panels):
            axes[r, c].imshow(img)
            axes[r, c].set_title(text, fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)
