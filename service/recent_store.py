"""The recent inspections on disk, for a shift review (``Settings.recent_dir``; off by default).

Layout, one pair of files per inspected image, named so that the names sort in time order::

    <root>/<category>/<UTC time>-<n>.jpg    the thumbnail (as in the page's recent panel)
    <root>/<category>/<UTC time>-<n>.json   time, file name, score, threshold, verdict, regions,
                                            artifact id, request id

The JSON is written last (to a temporary name, then renamed), so a listing of ``*.json`` only
sees complete entries. At most ``limit`` entries stay per category; the oldest are removed as
new ones arrive. One server process per folder: the bound is kept by the process that writes.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from collections import deque
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from service.recent_entry import RecentEntry

log = logging.getLogger("service.recent_store")


class RecentStore:
    """Bounded per-category folders of recent inspections under ``root``."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = Path(root)
        self.limit = limit
        self._stems: dict[str, deque[str]] = {}  # per category, oldest first
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def folder(self, category: str) -> Path:
        return self.root / category  # category names are validated by the registry (no separators, no dots)

    def write(self, category: str, entries: list[RecentEntry]) -> None:
        """Blocking: write ``entries`` and remove the oldest beyond the limit."""
        folder = self.folder(category)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            stems = self._known(category)
            for entry in entries:
                stem = f"{entry.time:%Y%m%dT%H%M%S%fZ}-{next(self._counter):06d}"
                _write_entry(folder, stem, entry)
                stems.append(stem)
            while len(stems) > self.limit:
                _remove_entry(folder, stems.popleft())

    def load(self, category: str, n: int) -> list[RecentEntry]:
        """Blocking: the newest ``n`` complete entries on disk, oldest first (unreadable ones are skipped)."""
        with self._lock:
            stems = list(self._known(category))[-n:] if n > 0 else []
        entries = []
        for stem in stems:
            try:
                entries.append(_read_entry(self.folder(category), stem))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("recent store: skipping %s/%s: %s", category, stem, exc)
        return entries

    def _known(self, category: str) -> deque[str]:
        """The category's entry names, oldest first (listed once, then kept up to date)."""
        if category not in self._stems:
            folder = self.folder(category)
            names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
            self._stems[category] = deque(names)
        return self._stems[category]


def _write_entry(folder: Path, stem: str, entry: RecentEntry) -> None:
    (folder / f"{stem}.jpg").write_bytes(entry.thumbnail)
    fields = {k: v for k, v in asdict(entry).items() if k not in ("thumbnail", "model_input")}
    fields["time"] = entry.time.isoformat()
    tmp = folder / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, folder / f"{stem}.json")


def _read_entry(folder: Path, stem: str) -> RecentEntry:
    fields = json.loads((folder / f"{stem}.json").read_text())
    fields["time"] = datetime.fromisoformat(fields["time"])
    fields["size"] = tuple(fields["size"]) if fields.get("size") else None
    return RecentEntry(**fields, thumbnail=(folder / f"{stem}.jpg").read_bytes())


def _remove_entry(folder: Path, stem: str) -> None:
    for suffix in (".json", ".jpg"):  # the JSON first: a half-removed entry is never listed
        try:
            (folder / f"{stem}{suffix}").unlink()
        except FileNotFoundError:
            pass
