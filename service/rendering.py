"""From an ``InspectionResult`` to response fields: verdict, regions and PNG images at input size.

Blocking numpy/OpenCV work; the router runs it in a worker thread.
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass

import cv2
import numpy as np

from model.method.amc import colorize, find_regions, normalized_score, overlay, resize_map
from service.batching import Scored

OUTPUT_CHOICES = frozenset({"heatmap", "mask", "overlay"})
DEFAULT_OUTPUTS = frozenset({"heatmap", "mask"})


class NonFiniteResult(ValueError):
    """The model produced NaN or infinity; never sent to a client."""


@dataclass(frozen=True)
class RenderOptions:
    outputs: frozenset[str] = DEFAULT_OUTPUTS
    threshold: float | None = None  # image threshold override
    max_regions: int = 32
    png_compression: int = 1


def parse_outputs(text: str) -> frozenset[str]:
    """``"heatmap,mask"`` -> the set; ``"none"`` or ``""`` -> empty. Raises ``ValueError`` on unknown names."""
    names = {part.strip().lower() for part in text.split(",") if part.strip()}
    if names <= {"none"}:
        return frozenset()
    unknown = names - OUTPUT_CHOICES
    if unknown or "none" in names:
        raise ValueError(f"outputs must be 'none' or a comma list of {sorted(OUTPUT_CHOICES)}")
    return frozenset(names)


def png_base64(image: np.ndarray, compression: int) -> str:
    """RGB ``[H, W, 3]`` or gray ``[H, W]`` ``uint8`` -> base64 PNG."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def verdict(score: float, threshold: float, scale: float) -> tuple[bool, float]:
    """``(is_anomalous, normalized_score)`` of a raw score against ``threshold``."""
    return bool(score > threshold), normalized_score(score, threshold, scale)


def render(image: np.ndarray, scored: Scored, options: RenderOptions) -> tuple[dict, float]:
    """Fields of one ``ImageResult`` (without ids and timings) and the encode time in ms.

    ``image`` is the decoded input ``[H, W, 3]``; maps are resized to ``H x W``. The
    heatmap's colour range is fixed per artifact, ``[0, 2 x calibrated image threshold]``,
    so a colour means the same value in every image.
    """
    started = time.perf_counter()
    result, thresholds = scored.result, scored.inspector.thresholds
    if not math.isfinite(result.score) or not np.isfinite(result.anomaly_map).all():
        raise NonFiniteResult(f"non-finite anomaly map from {scored.inspector.artifact_id}")
    threshold = result.threshold if options.threshold is None else options.threshold
    is_anomalous, normalized = verdict(result.score, threshold, thresholds.scale)
    height, width = image.shape[:2]
    full = resize_map(result.anomaly_map, height, width)
    mask = full > result.pixel_threshold
    fields = {
        "width": width, "height": height, "score": result.score, "normalized_score": normalized,
        "threshold": threshold, "pixel_threshold": result.pixel_threshold, "is_anomalous": is_anomalous,
        "regions": [vars(r) for r in find_regions(full, mask, options.max_regions)] if options.max_regions else [],
    }
    fields.update(_images(image, full, mask, 2.0 * thresholds.image, options))
    return fields, (time.perf_counter() - started) * 1000.0


def _images(image: np.ndarray, full: np.ndarray, mask: np.ndarray, vmax: float, options: RenderOptions) -> dict:
    out: dict[str, str] = {}
    heat = colorize(full, 0.0, vmax) if options.outputs & {"heatmap", "overlay"} else None
    if "heatmap" in options.outputs:
        out["heatmap"] = png_base64(heat, options.png_compression)
    if "mask" in options.outputs:
        out["mask"] = png_base64(mask.astype(np.uint8) * 255, options.png_compression)
    if "overlay" in options.outputs:
        out["overlay"] = png_base64(overlay(image, heat, mask), options.png_compression)
    return out
