"""Score drift per category: recent image scores against the held-out goods of the fit.

A line whose good parts start scoring higher (lighting changed, fixture moved, camera
refocused) raises false alarms long before anyone re-fits. ``DriftTracker`` keeps the
last ``window`` raw image scores of one category in a bounded deque (``record`` is an
append per score, nothing else) and, only when asked (``GET /categories/{name}`` or a
Prometheus scrape), compares them with the artifact's held-out good scores:

* ``ratio`` = median of the window / median (p50) of the held-out goods. The median
  ignores the minority of truly defective parts in the window: 1.0 means good parts
  score as they did at fit time, 1.3 means 30 % higher.
* ``recent_anomaly_rate`` = share of the window above the calibrated image threshold,
  against the fit's target false-alarm rate (``expected_false_alarm_rate``).

``status`` cut-offs (``judge``), first match wins:

* ``insufficient_data``: fewer than ``MIN_SCORES`` scores since the artifact was loaded;
* ``drift``: ratio > ``DRIFT_RATIO`` (1.5), or at least ``MIN_ALARMS`` (3) scores above
  the threshold and a rate > ``DRIFT_RATE_FACTOR`` (5) x the expected rate;
* ``watch``: ratio > ``WATCH_RATIO`` (1.2), or at least ``MIN_ALARMS`` above the
  threshold and a rate > ``WATCH_RATE_FACTOR`` (2) x the expected rate;
* ``ok`` otherwise.

A (re)load starts a fresh window on the new artifact's baseline (``reset``); scores of
a batch that ran on another artifact (in flight across a reload) are not recorded.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # settings import this module: keep it free of the model stack
    from model.serving import Manifest

MIN_SCORES = 8  # fewer scores than this: no statistics, status insufficient_data
MIN_ALARMS = 3  # fewer scores above the threshold than this never judge by the rate alone
WATCH_RATIO, DRIFT_RATIO = 1.2, 1.5
WATCH_RATE_FACTOR, DRIFT_RATE_FACTOR = 2.0, 5.0

Status = Literal["insufficient_data", "ok", "watch", "drift"]


@dataclass(frozen=True)
class Baseline:
    """What the window is compared with: the live artifact's held-out goods and threshold."""

    artifact_id: str | None = None
    holdout_median: float | None = None
    threshold: float | None = None
    expected_false_alarm_rate: float | None = None

    @classmethod
    def of(cls, artifact_id: str, manifest: Manifest | None) -> Baseline:
        if manifest is None:  # an unsaved inspector: nothing to compare with
            return cls(artifact_id)
        median = manifest.calibration.holdout_scores.get("p50")
        return cls(artifact_id, float(median) if median is not None else None,
                   float(manifest.calibration.thresholds.image),
                   float(manifest.config.calibration.image_false_alarm_rate))


@dataclass(frozen=True)
class DriftSnapshot:
    """The window's statistics at one moment (``None`` where there is too little to say)."""

    window: int
    count: int
    recent_median: float | None
    holdout_median: float | None
    ratio: float | None
    recent_anomaly_rate: float | None
    expected_false_alarm_rate: float | None
    threshold: float | None
    status: Status
    hint: str


class DriftTracker:
    """The last ``window`` image scores of one category and their comparison with its baseline."""

    def __init__(self, window: int = 256, baseline: Baseline | None = None) -> None:
        if window < MIN_SCORES:
            raise ValueError(f"drift window {window} < {MIN_SCORES}")
        self.window = window
        self._lock = threading.Lock()
        self._scores: deque[float] = deque(maxlen=window)
        self._baseline = baseline or Baseline()

    @property
    def baseline(self) -> Baseline:
        return self._baseline

    def reset(self, baseline: Baseline) -> None:
        """A fresh, empty window compared with ``baseline`` (a newly loaded artifact)."""
        with self._lock:
            self._scores = deque(maxlen=self.window)
            self._baseline = baseline

    def record(self, scores: Iterable[float], artifact_id: str | None = None) -> None:
        """Append raw image scores (O(1) each). ``artifact_id``: the artifact that scored them;
        scores of another artifact than the baseline's are dropped."""
        with self._lock:
            if artifact_id is None or artifact_id == self._baseline.artifact_id:
                self._scores.extend(scores)

    def snapshot(self) -> DriftSnapshot:
        """Median, ratio, rate and status of the window now (a sort of at most ``window`` floats)."""
        with self._lock:
            scores, base = list(self._scores), self._baseline
        count = len(scores)
        median = ratio = rate = None
        alarms = 0
        if count >= MIN_SCORES:
            median = statistics.median(scores)
            if base.holdout_median is not None and base.holdout_median > 0:
                ratio = median / base.holdout_median
            if base.threshold is not None:
                alarms = sum(s > base.threshold for s in scores)
                rate = alarms / count
        status, hint = judge(count, ratio, rate, alarms, base.expected_false_alarm_rate)
        return DriftSnapshot(self.window, count, median, base.holdout_median, ratio, rate,
                             base.expected_false_alarm_rate, base.threshold, status, hint)


def judge(count: int, ratio: float | None, rate: float | None, alarms: int,
          expected: float | None) -> tuple[Status, str]:
    """The status and what to check (cut-offs in the module docstring)."""
    if count < MIN_SCORES:
        return "insufficient_data", (f"{count} of the {MIN_SCORES} scores needed since the artifact was loaded: "
                                     "no judgement yet")
    excess = rate / expected if rate is not None and expected and alarms >= MIN_ALARMS else 0.0
    if ratio is not None and ratio > DRIFT_RATIO:
        return "drift", _shifted(ratio, "act now: false alarms are piling up or about to")
    if excess > DRIFT_RATE_FACTOR:
        return "drift", _flagged(rate, expected)
    if ratio is not None and ratio > WATCH_RATIO:
        return "watch", _shifted(ratio, "watch it before false alarms start")
    if excess > WATCH_RATE_FACTOR:
        return "watch", _flagged(rate, expected)
    return "ok", "recent good parts score like the held-out goods of the fit"


def _shifted(ratio: float, urgency: str) -> str:
    return (f"good parts now score {ratio:.2f}x their fit-time median ({urgency}): check the lighting, "
            "the camera focus and the fixture; if the change is intended, confirm 20 or so recent good parts "
            "as good (the page's recent list, or POST /categories/<c>/feedback) and update the model")


def _flagged(rate: float, expected: float) -> str:
    return (f"{rate:.1%} of recent parts are above the threshold against {expected:.1%} expected, while the "
            "median is steady: look at the flagged parts; real defects mean a process problem, good parts "
            "mean a local change (lighting in one area, fixture): fix it, or confirm those good parts as false "
            "alarms and update the model (POST /categories/<c>/feedback, then .../update)")
