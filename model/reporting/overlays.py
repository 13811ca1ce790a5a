"""Anomaly maps as pictures: a colour map over a fixed range, and a blend over the input image."""

from __future__ import annotations

import cv2
import numpy as np


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
