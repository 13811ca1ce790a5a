"""The verdict: the one rule from an image's final anomaly map and the calibrated thresholds
to its score, decision, mask and defect regions, at any output size.

The Inspector returns an ``InspectionResult`` per image (raw score and map at the model
input size); ``InspectionResult.verdict(size, threshold)`` gives the complete ``Verdict``
that the server, ``evaluate`` and the fit's calibration all read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from model.method.calibration import Thresholds

MAX_REGIONS = 32
HEATMAP_RANGE = 2.0  # a map is drawn over [0, 2 x the calibrated image threshold]: the threshold mid-range


class NonFiniteResult(ValueError):
    """The model produced NaN or infinity: an internal error, never a client's answer."""


@dataclass(frozen=True)
class Region:
    """A connected defect region, in pixels of the image it was found in."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float


def normalized_score(score: float, threshold: float, scale: float) -> float:
    """Map a raw score to [0, 1] with the threshold at 0.5 (``scale``: raw units per 0.5)."""
    if not math.isfinite(score):
        return 1.0 if score > 0 else 0.0
    return float(min(1.0, max(0.0, 0.5 + 0.5 * (score - threshold) / max(scale, 1e-12))))


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float map ``[S, S]`` to ``[height, width]``."""
    if anomaly_map.shape == (height, width):
        return anomaly_map
    return cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)


def find_regions(anomaly_map: np.ndarray, mask: np.ndarray, max_regions: int = MAX_REGIONS) -> list[Region]:
    """Connected components (8-connectivity) of ``mask [H, W]``, largest peak first."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    regions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        peak = float(anomaly_map[labels == label].max())
        regions.append(Region(x, y, w, h, area, peak))
    regions.sort(key=lambda r: r.peak, reverse=True)
    return regions[:max_regions]


@dataclass(frozen=True)
class Verdict:
    """One image's complete verdict; map, mask and regions at the requested size ``[H, W]``."""

    score: float
    normalized_score: float
    threshold: float  # the image threshold applied (calibrated, or the caller's override)
    pixel_threshold: float
    is_anomalous: bool  # score > threshold
    anomaly_map: np.ndarray  # float32 [H, W]
    mask: np.ndarray  # bool [H, W], anomaly_map > pixel_threshold
    regions: list[Region]
    heatmap_max: float  # top of the map's colour range, the same for every image of an artifact


    @property
    def height(self) -> int:
        return int(self.anomaly_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.anomaly_map.shape[1])


@dataclass
class InspectionResult:
    """What the Inspector measured for one image: the raw score and the final map at the
    model input size ``[S, S]``, with the thresholds of the artifact that scored it."""

    score: float  # max of anomaly_map
    anomaly_map: np.ndarray  # float32 [S, S]
    thresholds: Thresholds  # calibrated
    threshold: float  # the image threshold in force for this call (calibrated unless overridden)
    artifact_id: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # stage times of the batch it ran in
    batch_size: int = 1

    def verdict(self, size: tuple[int, int] | None = None, threshold: float | None = None,
                max_regions: int = MAX_REGIONS, pixel_threshold: float | None = None) -> Verdict:
        """The verdict with map and mask at ``size = (height, width)`` (default: the model's).

        ``threshold`` overrides the image threshold and ``pixel_threshold`` the mask's;
        ``max_regions=0`` skips the regions.
        Raises ``NonFiniteResult`` when the score or the map holds NaN or infinity.
        """
        if not math.isfinite(self.score) or not np.isfinite(self.anomaly_map).all():
            raise NonFiniteResult(f"non-finite anomaly map from {self.artifact_id}")
        t_img = self.threshold if threshold is None else float(threshold)
        t_pix = self.thresholds.pixel if pixel_threshold is None else float(pixel_threshold)
        height, width = size or self.anomaly_map.shape
        full = resize_map(self.anomaly_map, height, width)
        mask = full > t_pix
        return Verdict(
            score=self.score,
            normalized_score=normalized_score(self.score, t_img, self.thresholds.scale),
            threshold=t_img,
            pixel_threshold=t_pix,
            is_anomalous=bool(self.score > t_img),
            anomaly_map=full,
            mask=mask,
            regions=find_regions(full, mask, max_regions) if max_regions else [],
            heatmap_max=HEATMAP_RANGE * self.thresholds.image,
        )
