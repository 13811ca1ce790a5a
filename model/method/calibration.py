"""Calibration: decision thresholds from held-out good images (or labelled defects).

* Image threshold at a target false-alarm rate. A held-out set is small (tens of
  images), so the tail is extrapolated with a log-normal fit of the good scores; the
  threshold is never below the largest held-out good score's empirical quantile.
* Pixel threshold at a target fraction of good pixels, from all held-out map pixels.
* With labelled defects, the same false-alarm-rate thresholds by default: a few defects of a few
  types neither lower the image threshold below what keeps the target on good parts nor raise
  it above what catches the types they do not show. The thresholds that maximise F1 on the
  goods plus the defects are computed and recorded beside them, and used only when asked for
  (``calibration.with_defects="f1"``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
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


WITH_DEFECTS = ("far", "f1")  # which thresholds a fit with labelled defects publishes


def calibrate_with_defects(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray | None,
                           image_far: float, pixel_far: float, policy: str = "far") -> tuple[Thresholds, dict]:
    """Thresholds from held-out goods plus labelled defects, and the record of both choices.

    ``policy="far"``: the goods' false-alarm-rate thresholds (``calibrate_on_good``). F1 on a
    few labelled defects sits just below them: an image threshold from it can flag a large share
    of good parts (on a part photographed again in a later session, 12 of 15), and it is
    stricter than the false-alarm one exactly when the defects score high, so it would miss the
    types they do not show. ``policy="f1"``: the thresholds that maximise F1, as they are, when
    the user asks for them.

    ``scores [N]``, ``labels [N]``, ``maps [N, H, W]``; the pixel F1 threshold is against
    ``masks [N, H, W]`` (without masks, the pixel threshold stays at ``pixel_far`` of good pixels).
    The record: ``{"policy", "far": {image, pixel}, "f1": {image, image_f1, pixel, pixel_f1}}``.
    """
    if policy not in WITH_DEFECTS:
        raise ValueError(f"calibration.with_defects must be one of {WITH_DEFECTS}, got {policy!r}")
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    far = calibrate_on_good(scores[~labels], maps[~labels], image_far, pixel_far)
    image, image_f1 = best_f1_threshold(scores, labels)
    pixel, pixel_f1 = best_f1_threshold(maps, masks) if masks is not None else (far.pixel, None)
    record = {"policy": policy, "far": {"image": far.image, "pixel": far.pixel},
              "f1": {"image": image, "image_f1": image_f1, "pixel": pixel, "pixel_f1": pixel_f1}}
    if policy == "far":
        return replace(far, method=f"far(image={image_far},pixel={pixel_far}); f1 recorded"), record
    method = "f1(image,pixel)" if masks is not None else f"f1(image),far(pixel={pixel_far})"
    return Thresholds(image=image, pixel=pixel, scale=score_scale(image, scores[~labels]), method=method), record
