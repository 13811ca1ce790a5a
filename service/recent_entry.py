"""One recent inspection as the page's recent panel shows it, and its thumbnail.

``service.recent`` keeps entries in memory and ``service.recent_store`` on disk; both import
this module and not each other's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import cv2
import numpy as np

from model.serving import Verdict, resize_rgb

THUMBNAIL_PX = 96  # longer side of a thumbnail
JPEG_QUALITY = 80


@dataclass(frozen=True)
class RecentEntry:
    """One inspected image: what an operator glances at, and a small JPEG of it."""

    time: datetime  # UTC, when the result was recorded
    filename: str | None
    score: float
    threshold: float  # the image threshold the verdict used (calibrated, or the request's override)
    is_anomalous: bool
    regions: int  # defect regions found
    artifact_id: str
    request_id: str
    thumbnail: bytes  # JPEG
    size: tuple[int, int] | None = None  # the inspected image's width and height
    # The image as the model saw it (RGB uint8 at the input size), in memory only: what a
    # confirmation of this inspection stores (``service.feedback``).
    model_input: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, time: datetime, image: np.ndarray, verdict: Verdict, filename: str | None, artifact_id: str,
           request_id: str, input_size: int | None = None) -> RecentEntry:
        """Blocking (the thumbnail): the entry of the decoded ``image [H, W, 3]`` and its verdict;
        with ``input_size``, the image at the model's input size too."""
        height, width = image.shape[:2]
        return cls(time, filename, verdict.score, verdict.threshold, verdict.is_anomalous, len(verdict.regions),
                   artifact_id, request_id, thumbnail(image), (width, height),
                   resize_rgb(image, input_size) if input_size else None)


def thumbnail(image: np.ndarray, size: int = THUMBNAIL_PX) -> bytes:
    """RGB ``uint8 [H, W, 3]`` -> JPEG bytes, at most ``size`` pixels on the longer side."""
    height, width = image.shape[:2]
    scale = min(1.0, size / max(height, width))
    small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1.0 else image
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
