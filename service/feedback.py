"""Confirmations from the line, kept on disk until an update learns them (``Settings.feedback_dir``).

Each confirmed image is stored once, at the category's model input size (what the model saw;
the update reads it back without any further change), named by the SHA-256 of its PNG bytes,
in folders the update command reads as they are::

    <root>/<category>/good/<sha>.png                                  confirmed good parts
    <root>/<category>/marked/test/<type>/<sha>.png                    defects with a box or mask,
    <root>/<category>/marked/ground_truth/<type>/<sha>_mask.png       and that mask
    <root>/<category>/unmarked/test/<type>/<sha>.png                  defects, image level only
    <root>/<category>/meta/<sha>.json                                 label, type, source, time

The meta file is written last (to a temporary name, then renamed), so the pending list only
counts complete entries. At most ``limit`` confirmations wait per category; then 409
``feedback_full`` until an update learns them. A duplicate (same hash pending, or learned by the
live version) is 409 ``duplicate``; a full disk is 507 and leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from service.errors import ApiError

LABELS = ("good", "defect")
DEFAULT_TYPE = "confirmed"


@dataclass(frozen=True)
class Confirmation:
    """One confirmed image's record (``meta/<sha>.json``)."""

    sha256: str
    label: str  # good | defect
    defect_type: str | None
    has_mask: bool
    request_id: str | None  # the inspection it came from, or None for an upload
    filename: str | None
    at: float  # UNIX time


def png_of(image: np.ndarray) -> bytes:
    """RGB ``uint8 [H, W, 3]`` -> PNG bytes (deterministic for the same pixels)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


class FeedbackStore:
    """Bounded per-category folders of confirmations under ``root``."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = Path(root)
        self.limit = limit
        self._lock = threading.Lock()

    def folder(self, category: str) -> Path:
        return self.root / category  # names are validated by the API (no separators, no dots)

    def pending(self, category: str) -> list[Confirmation]:
        """Blocking: the confirmations waiting for an update, oldest first."""
        meta = self.folder(category) / "meta"
        items = []
        for f in sorted(meta.glob("*.json")) if meta.is_dir() else []:
            try:
                items.append(Confirmation(**json.loads(f.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # a damaged record is not counted; its image stays for an operator to see
        return sorted(items, key=lambda c: c.at)

    def add(self, category: str, image: np.ndarray, label: str, learned: set[str], defect_type: str | None = None,
            mask: np.ndarray | None = None, request_id: str | None = None,
            filename: str | None = None) -> Confirmation:
        """Blocking: store one confirmation of ``image`` (at the model input size; ``mask`` bool at the
        same size, for a defect). ``learned``: hashes the live version has learned already."""
        data = png_of(image)
        sha = hashlib.sha256(data).hexdigest()
        folder = self.folder(category)
        with self._lock:
            if sha in learned:
                raise ApiError(409, "duplicate", "the live version has learned this image already")
            if (folder / "meta" / f"{sha}.json").exists():
                raise ApiError(409, "duplicate", "this image is confirmed already and waits for an update")
            meta = folder / "meta"
            if meta.is_dir() and sum(1 for _ in meta.glob("*.json")) >= self.limit:
                raise ApiError(409, "feedback_full", f"{self.limit} confirmations wait for {category}: "
                               "update the model (POST /categories/{category}/update) before adding more")
            kind = defect_type or DEFAULT_TYPE
            record = Confirmation(sha, label, kind if label == "defect" else None, mask is not None, request_id,
                                  filename, time.time())
            files = self._files(folder, record)
            try:
                _write(files["image"], data)
                if mask is not None:
                    _write(files["mask"], cv2.imencode(".png", mask.astype(np.uint8) * 255)[1].tobytes())
                _write(files["meta"], json.dumps(asdict(record)).encode())
            except OSError as exc:
                for f in files.values():
                    with contextlib.suppress(OSError):
                        f.unlink(missing_ok=True)
                raise storage_error(exc, self.root) from exc
        return record

    def snapshot(self, category: str, dest: Path) -> tuple[list[str], dict[str, Path]]:
        """Blocking: hard links of every pending confirmation under ``dest`` (the folders the update
        command takes: ``good``, ``marked``, ``unmarked`` when not empty); their hashes."""
        folder = self.folder(category)
        hashes, sources = [], {}
        for record in self.pending(category):
            for role, src in self._files(folder, record).items():
                if role == "meta" or not src.exists():
                    continue
                target = dest / src.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, target)
                except OSError:
                    shutil.copyfile(src, target)
            hashes.append(record.sha256)
        for part in ("good", "marked", "unmarked"):
            if (dest / part).is_dir():
                sources[part] = dest / part
        return hashes, sources

    def forget(self, category: str, hashes: list[str]) -> None:
        """Blocking: remove the confirmations an update has learned (the record first)."""
        folder = self.folder(category)
        with self._lock:
            for record in self.pending(category):
                if record.sha256 in hashes:
                    files = self._files(folder, record)
                    files.pop("meta").unlink(missing_ok=True)
                    for f in files.values():
                        f.unlink(missing_ok=True)

    @staticmethod
    def _files(folder: Path, record: Confirmation) -> dict[str, Path]:
        sha = record.sha256
        files = {"meta": folder / "meta" / f"{sha}.json"}
        if record.label == "good":
            files["image"] = folder / "good" / f"{sha}.png"
        elif record.has_mask:
            files["image"] = folder / "marked" / "test" / record.defect_type / f"{sha}.png"
            files["mask"] = folder / "marked" / "ground_truth" / record.defect_type / f"{sha}_mask.png"
        else:
            files["image"] = folder / "unmarked" / "test" / record.defect_type / f"{sha}.png"
        return files


def storage_error(exc: OSError, root: Path) -> ApiError:
    """The answer to a failed write under ``root``: 507 for a full disk, else 503 (not writable)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(507, "insufficient_storage", "no space left to keep the confirmations; nothing was stored")
    return ApiError(503, "feedback_unwritable", f"confirmations cannot be written ({exc.strerror}): make the "
                    "feedback folder writable, or set FACTORY_INSPECT_FEEDBACK_DIR")


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name (never a half-written file under its name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
