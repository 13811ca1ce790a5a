"""Calibration: decision thresholds from held-out good images (or labelled defects).

* Image threshold at a target false-alarm rate. A held-out set is small (tens of
  images), so the tail is extrapolated with a log-normal fit of the good scores; the
  threshold is never below the largest held-out good score's empirical quantile.
* Pixel threshold at a target fraction of good pixels, from all held-out map pixels.
* With labelled defects, the threshold that maximises F1 instead, capped at the
  false-alarm-rate one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np


@dataclass
class Thresholds:
    image: float
    pixel: float
    scale: float  # raw score units that move the normalised score by 0.5
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def far_threshold(good_scores: np.ndarray, false_alarm_rate: float) -> float:
    """Score threshold flagging about ``false_alarm_rate`` of good parts.

    ``max(log-normal quantile, empirical quantile)`` of ``good_scores [N]`` (all > 0).
    """
    s = np.asarray(good_scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no held-out scores to calibrate on")
    q = 1.0 - false_alarm_rate
    empirical = float(np.quantile(s, q))
    logs = np.log(np.maximum(s, 1e-12))
    if s.size < 3 or logs.std(ddof=1) == 0:
        return empirical
    z = NormalDist().inv_cdf(q)
    parametric = float(np.exp(logs.mean() + z * logs.std(ddof=1)))
    return max(parametric, empirical)


def pixel_far_threshold(good_maps: np.ndarray, false_alarm_rate: float) -> float:
    """Pixel threshold such that ``false_alarm_rate`` of good pixels in ``good_maps [N, H, W]`` exceed it."""
    return float(np.quantile(np.asarray(good_maps, dtype=np.float32).ravel(), 1.0 - false_alarm_rate))


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold maximising F1 for ``scores [N]`` against binary ``labels [N]``; returns (threshold, f1).

    The decision is ``score > threshold``: the threshold lies halfway between the lowest
    score flagged and the next lower score.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if not labels.any():
        raise ValueError("F1 calibration needs at least one defective sample")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct score
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / labels.sum()
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1))
    cut = s[last[best]]
    below = s[last[best] + 1] if last[best] + 1 < s.size else cut - max(abs(cut), 1.0) * 1e-6
    return float((cut + below) / 2), float(f1[best])


def score_statistics(scores: np.ndarray) -> dict[str, float]:
    """Summary of a score sample for the manifest."""
    s = np.asarray(scores, dtype=np.float64)
    return {
        "count": int(s.size),
        "mean": float(s.mean()),
        "std": float(s.std(ddof=1)) if s.size > 1 else 0.0,
        "min": float(s.min()),
        "p50": float(np.quantile(s, 0.5)),
        "p95": float(np.quantile(s, 0.95)),
        "max": float(s.max()),
    }


def score_scale(image_threshold: float, good_scores: np.ndarray) -> float:
    """Raw score units from the lowest good score to the threshold (``Thresholds.scale``), kept positive."""
    return max(image_threshold - float(np.min(good_scores)), 1e-6 * max(abs(image_threshold), 1.0))


def calibrate_on_good(
    good_scores: np.ndarray, good_maps: np.ndarray, image_far: float, pixel_far: float
) -> Thresholds:
    """Thresholds from held-out good images only."""
    image = far_threshold(good_scores, image_far)
    pixel = pixel_far_threshold(good_maps, pixel_far)
    return Thresholds(image=image, pixel=pixel, scale=score_scale(image, good_scores),
                      method=f"far(image={image_far},pixel={pixel_far})")


def calibrate_with_defects(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray | None,
                           image_far: float, pixel_far: float) -> Thresholds:
    """Thresholds from held-out goods plus labelled defects: each maximises F1, but is never
    stricter than the goods' false-alarm-rate threshold (``calibrate_on_good``'s).

    A few labelled defects show a few types: the F1 threshold sits just below them, and when
    they score high it would miss the types they do not show, which the false-alarm-rate
    threshold would have caught (measured with issue 17's protocol: docs/lab/issue-17-defect-head.md).

    ``scores [N]``, ``labels [N]``, ``maps [N, H, W]``; the pixel threshold maximises pixel
    F1 against ``masks [N, H, W]``, or without masks stays at ``pixel_far`` of good pixels.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    floor = calibrate_on_good(scores[~labels], maps[~labels], image_far, pixel_far)
    image = min(best_f1_threshold(scores, labels)[0], floor.image)
    if masks is not None:
        pixel = min(best_f1_threshold(maps, masks)[0], floor.pixel)
        method = f"f1(image,pixel) capped at far(image={image_far},pixel={pixel_far})"
    else:
        pixel = floor.pixel
        method = f"f1(image) capped at far(image={image_far}),far(pixel={pixel_far})"
    return Thresholds(image=image, pixel=pixel, scale=score_scale(image, scores[~labels]), method=method)
