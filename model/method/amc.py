"""AMC (anomaly map compensation) and post-processing of the final map.

``AnomalyMapCombiner`` upsamples each branch map to the model input size, multiplies
them pixel-wise and smooths with a Gaussian (sigma 4 by default). The image score is
the maximum of the final map. Helpers turn a map into input-resolution images and
defect regions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian ``[K]``, ``K = 2*round(4*sigma)+1``."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class AnomalyMapCombiner(nn.Module):
    """Branch maps ``[B, h, w]`` (one or more) -> final map ``[B, S, S]``."""

    def __init__(self, image_size: int, sigma: float) -> None:
        super().__init__()
        self.image_size = image_size
        self.register_buffer("kernel", gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1), persistent=False)

    def smooth(self, m: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with reflect padding, ``[B, 1, S, S]`` -> same."""
        k = self.kernel
        r = k.numel() // 2
        if r == 0:
            return m
        m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(m, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        final = None
        for m in maps:
            up = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
            final = up if final is None else final * up
        return self.smooth(final).squeeze(1)


def image_scores(final: torch.Tensor) -> torch.Tensor:
    """Image score ``[B]`` = max of the final map ``[B, S, S]``."""
    return final.flatten(1).amax(1)


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


@dataclass(frozen=True)
class Region:
    """A connected defect region, in pixels of the image it was found in."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float


def find_regions(anomaly_map: np.ndarray, mask: np.ndarray, max_regions: int = 32) -> list[Region]:
    """Connected components (8-connectivity) of ``mask [H, W]``, largest peak first."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    regions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        peak = float(anomaly_map[labels == label].max())
        regions.append(Region(x, y, w, h, area, peak))
    regions.sort(key=lambda r: r.peak, reverse=True)
    return regions[:max_regions]


def colorize(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Float map ``[H, W]`` -> RGB ``uint8`` heatmap ``[H, W, 3]`` (JET), clipped to [vmin, vmax]."""
    scaled = np.clip((anomaly_map - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """Blend an RGB heatmap over an RGB image (same size), outlining ``mask`` in white."""
    out = cv2.addWeighted(image, 1.0 - alpha, heatmap, alpha, 0.0)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, image.shape[0] // 300))
    return out
