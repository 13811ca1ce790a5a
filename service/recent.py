"""The recent inspections of one category, for the page's recent panel: a bounded ring in memory.

Each entry (``service.recent_entry``) is what an operator glances at (time, file name, score,
threshold, verdict) plus a small JPEG thumbnail of the decoded input. The ring keeps the last
``limit`` entries (``Settings.recent_per_category``), so its memory is bounded by ``limit`` x
(thumbnail + about 1 kB of fields); BENCHMARKS.md measures it. With ``Settings.recent_dir`` an
entry is also written to disk (``service.recent_store``), and the ring starts from the newest
entries found there.

``record`` is called from worker threads and ``latest`` from the event loop: a lock guards the
ring. Recording is a side show: the inspect pipeline logs its errors and never lets them fail an
inspection.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from service.recent_entry import RecentEntry

if TYPE_CHECKING:
    from service.recent_store import RecentStore

log = logging.getLogger("service.recent")


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

    def record(self, entries: Sequence[RecentEntry]) -> None:
        """Blocking: keep the entries (and write them to the store, if any)."""
        if not self.enabled:
            return
        with self._lock:
            self._ring.extend(entries)
        if self._store is not None:
            self._store.write(self.category, list(entries))

    def latest(self, n: int | None = None) -> list[RecentEntry]:
        """The newest ``n`` (default: all kept), newest first."""
        with self._lock:
            entries = list(self._ring)
        entries.reverse()
        return entries if n is None else entries[:n]

    def of_request(self, request_id: str) -> list[RecentEntry]:
        """The entries of one request, in the request's image order (empty when none is kept)."""
        with self._lock:
            return [e for e in self._ring if e.request_id == request_id]

    def __len__(self) -> int:
        return len(self._ring)
