"""The recent inspections of one category, for the page's recent panel: a bounded ring in memory.

Each entry is what an operator glances at (time, file name, score, threshold, verdict) plus a
small JPEG thumbnail of the decoded input (at most ``THUMBNAIL_PX`` on its longer side, a few
kB). The ring keeps the last ``limit`` entries (``Settings.recent_per_category``), so its memory
is bounded by ``limit`` x (thumbnail + about 1 kB of fields); BENCHMARKS.md measures it. With
``Settings.recent_dir`` an entry is also written to disk (``service.recent_store``), and the ring
starts from the newest entries found there.

``record`` is called from worker threads and ``latest`` from the event loop: a lock guards the
ring. Recording is a side show: the caller (the inspect router) logs its errors and never lets
them fail an inspection.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from service.recent_store import RecentStore
    from service.schemas import ImageResult

log = logging.getLogger("service.recent")

THUMBNAIL_PX = 96  # longer side of a thumbnail
JPEG_QUALITY = 80


@dataclass(frozen=True)
class RecentEntry:
    """One inspected image, as the recent panel shows it."""

    time: datetime  # UTC, when the result was recorded
    filename: str | None
    score: float
    threshold: float  # the image threshold the verdict used (calibrated, or the request's override)
    is_anomalous: bool
    regions: int  # defect regions found
    artifact_id: str
    request_id: str
    thumbnail: bytes  # JPEG


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


def entries_of(images: Sequence[np.ndarray], results: Sequence[ImageResult]) -> list[RecentEntry]:
    """Blocking (thumbnails): one entry per decoded image ``[H, W, 3]`` and its result."""
    now = datetime.now(timezone.utc)
    return [RecentEntry(now, r.filename, r.score, r.threshold, r.is_anomalous, len(r.regions), r.artifact_id,
                        r.request_id, thumbnail(image))
            for image, r in zip(images, results, strict=True)]


class RecentInspections:
    """The last ``limit`` inspections of ``category`` (newest last in the ring), optionally on disk too."""

    def __init__(self, category: str, limit: int, store: RecentStore | None = None) -> None:
        self.category = category
        self.limit = limit
        self._store = store
        self._ring: deque[RecentEntry] = deque(maxlen=limit)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def restore(self) -> None:
        """Blocking: start from the newest entries of the disk store (nothing without one)."""
        if self._store is None or not self.enabled:
            return
        entries = self._store.load(self.category, self.limit)
        with self._lock:
            self._ring.extend(entries)
        log.info("category %s: %d recent inspections restored from %s", self.category, len(entries),
                 self._store.root)

    def record(self, images: Sequence[np.ndarray], results: Sequence[ImageResult]) -> None:
        """Blocking: thumbnail and keep each image's result (and write it to the store, if any)."""
        if not self.enabled:
            return
        entries = entries_of(images, results)
        with self._lock:
            self._ring.extend(entries)
        if self._store is not None:
            self._store.write(self.category, entries)

    def latest(self, n: int | None = None) -> list[RecentEntry]:
        """The newest ``n`` (default: all kept), newest first."""
        with self._lock:
            entries = list(self._ring)
        entries.reverse()
        return entries if n is None else entries[:n]

    def __len__(self) -> int:
        return len(self._ring)
