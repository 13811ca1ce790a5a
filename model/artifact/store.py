"""Artifact I/O: one folder per category, ``manifest.json`` plus ``*.safetensors``.

Layout under an artifacts root::

    <root>/<category>            -> symlink to .versions/<category>-<artifact id>
    <root>/.versions/<category>-<artifact id>/manifest.json, *.safetensors

A new fit is written into a temporary folder, fsynced, renamed into ``.versions`` and
published by atomically replacing the ``<category>`` symlink (``os.replace``). A crash
or kill at any point leaves the previous artifact served. The manifest records the
SHA-256 of every other file; loading refuses an artifact whose files do not match.
No pickle anywhere. The manifest's schema is ``model.artifact.manifest``.

Test hook (off unless set): ``FACTORY_INSPECT_TEST_PAUSE=<point>:<marker file>`` makes the
writer create the marker file at ``point`` and then sleep (at most ``TEST_PAUSE_S``) so a
test can SIGKILL it exactly there. Points: ``before_rename`` (files written and fsynced in
the temporary folder, not yet in ``.versions``) and ``before_swap`` (renamed into
``.versions``, the ``<category>`` symlink not yet replaced).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.artifact.manifest import ArtifactError, Manifest, RollbackError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERSIONS_DIR = ".versions"
KEEP_VERSIONS = 2  # the live one and the one before it (its parent, when it was updated: rollback)
# Files an artifact keeps for updates (model.jobs.updatable), which serving never loads
FIT_ONLY = frozenset({"moments", "evidence"})
CATEGORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TEST_PAUSE_ENV = "FACTORY_INSPECT_TEST_PAUSE"
TEST_PAUSE_S = 120.0


@dataclass
class Artifact:
    path: Path
    manifest: Manifest
    tensors: dict[str, dict[str, torch.Tensor]]  # file stem -> tensors

    @property
    def artifact_id(self) -> str:
        return self.manifest.artifact_id


def validate_category(name: str) -> str:
    """Return ``name`` if it is a safe category name (no path separators, dots-only or long names)."""
    if not CATEGORY_RE.fullmatch(name) or set(name) <= {"."}:
        raise ValueError(f"invalid category name {name!r}: use letters, digits, '_', '-', '.' (max 64)")
    return name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _test_pause(point: str) -> None:
    """The test hook of the module docstring: a no-op unless ``FACTORY_INSPECT_TEST_PAUSE`` names ``point``."""
    spec = os.environ.get(TEST_PAUSE_ENV)
    if spec and spec.partition(":")[0] == point:
        Path(spec.partition(":")[2]).touch()
        time.sleep(TEST_PAUSE_S)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(root: Path | str) -> Path:
    """The artifacts ``root``, created if missing, once a file could be written in it: a fit finds out
    before its work, not after. Raises ``ArtifactRootError`` naming the folder and this process's user."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-"):
            pass
    except OSError as exc:
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "this user"
        raise ArtifactRootError(f"the artifacts folder {root} is not writable by {user} "
                                f"({exc.strerror or exc}): make it writable for the fit") from exc
    return root


class ArtifactRootError(ValueError):
    """The artifacts root cannot be written."""


def write_artifact(
    root: Path | str, category: str, manifest: Manifest, tensors: dict[str, dict[str, torch.Tensor]]
) -> Path:
    """Write and atomically publish an artifact; returns the published ``<root>/<category>`` path.

    ``tensors`` maps a file stem (``backbone``, ``memory_bank``...) to its tensors.
    The manifest is written with its ``artifact_id`` and ``files`` (``Manifest.published``).
    """
    validate_category(category)
    root = Path(root)
    versions = root / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{category}-", dir=root))
    try:
        files = {}
        for stem, group in tensors.items():
            name = f"{stem}.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in group.items()}, str(tmp / name))
            files[name] = sha256_file(tmp / name)
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
        full = manifest.published(f"{category}-{digest}", files)
        (tmp / MANIFEST).write_text(json.dumps(full.to_dict(), indent=2, sort_keys=False, allow_nan=False))
        for f in tmp.iterdir():
            os.chmod(f, 0o644)  # readable by a non-root server (read-only container mount)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _fsync_dir(tmp)
        final = versions / full.artifact_id
        _test_pause("before_rename")
        if final.exists():  # the same tensors, published before (a re-run): keep that folder, whole
            log.info("%s is already published with these tensors; publishing it again", full.artifact_id)
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
        _fsync_dir(versions)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    link = root / category
    previous = os.readlink(link).rpartition("/")[2] if link.is_symlink() else None
    _publish(root, category, final)
    _prune(root, category, keep={final.name, previous, full.lineage.parent if full.lineage else None})
    return root / category


def rollback(root: Path | str, category: str) -> tuple[str, str]:
    """Publish again the version the live ``<root>/<category>`` was updated from (its lineage's
    parent, hash-verified first); returns (the version left, the version now live).
    ``RollbackError`` when the live version has no parent or the parent is gone."""
    root = Path(root)
    live = read_manifest(root / validate_category(category))
    parent = live.lineage.parent if live.lineage else None
    if parent is None:
        raise RollbackError(f"{category}: the live version {live.artifact_id} was fitted, not updated: "
                            "there is no parent to return to")
    folder = root / VERSIONS_DIR / parent
    if not (folder / MANIFEST).is_file():
        raise RollbackError(f"{category}: the parent version {parent} is no longer kept")
    verify_files(folder, read_manifest(folder))
    _publish(root, category, folder)
    return live.artifact_id, parent


def _publish(root: Path, category: str, target: Path) -> None:
    """Point ``<root>/<category>`` at ``target`` with one atomic rename of a symlink."""
    link = root / category
    if link.exists() and not link.is_symlink():
        # A plain folder (copied by hand): move it aside as a version before swapping.
        os.rename(link, root / VERSIONS_DIR / f"{category}-manual-{os.getpid()}")
    tmp_link = root / f".link-{category}-{os.getpid()}"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(os.path.relpath(target, root), tmp_link)
    _test_pause("before_swap")
    os.replace(tmp_link, link)
    _fsync_dir(root)


def _prune(root: Path, category: str, keep: set[str | None]) -> None:
    """Delete old versions of ``category`` beyond the newest ``KEEP_VERSIONS``; those in ``keep``
    (the live one, the one it replaced, the parent it was updated from) are always kept."""
    kept = keep - {None}
    versions = sorted(
        (p for p in (root / VERSIONS_DIR).glob(f"{category}-*") if p.is_dir() and p.name not in kept),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in versions[max(0, KEEP_VERSIONS - len(kept)):]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".tmp-{category}-*"):
        # Left by a killed fit; safe to remove (never published).
        shutil.rmtree(stale, ignore_errors=True)


def version_manifest(root: Path | str, artifact_id: str) -> Manifest:
    """The manifest of a kept version of a category (``ArtifactError`` when it is not kept)."""
    return read_manifest(Path(root) / VERSIONS_DIR / validate_category(artifact_id))


def read_manifest(path: Path | str) -> Manifest:
    path = Path(path)
    try:
        data = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: no {MANIFEST}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: {MANIFEST} is not valid JSON") from exc
    return Manifest.from_dict(data, str(path))


def verify_files(path: Path, manifest: Manifest) -> None:
    """Raise ``ArtifactError`` unless every listed file exists with its recorded SHA-256."""
    for name, expected in manifest.files.items():
        if Path(name).name != name:
            raise ArtifactError(f"{path}: manifest names a file outside the artifact: {name!r}")
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"{path}: missing file {name}")
        if sha256_file(f) != expected:
            raise ArtifactError(f"{path}: {name} does not match its SHA-256 (corrupt or modified)")


def load_artifact(path: Path | str, fit_only: bool = False) -> Artifact:
    """Read an artifact folder, verifying every file's hash before any tensor is loaded. The files
    only an update reads (``FIT_ONLY``) are loaded with ``fit_only``."""
    path = Path(path).resolve()
    manifest = read_manifest(path)
    verify_files(path, manifest)
    wanted = [name for name in manifest.files if fit_only or Path(name).stem not in FIT_ONLY]
    try:
        tensors = {Path(name).stem: load_file(str(path / name)) for name in wanted}
    except Exception as exc:  # safetensors raises its own error types
        raise ArtifactError(f"{path}: unreadable tensors: {exc}") from exc
    return Artifact(path=path, manifest=manifest, tensors=tensors)


def list_categories(root: Path | str) -> list[str]:
    """Category names published under ``root`` (folders or links holding a manifest)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if not p.name.startswith(".") and CATEGORY_RE.fullmatch(p.name) and p.is_dir()
    )


def artifact_size_bytes(path: Path | str) -> int:
    path = Path(path).resolve()
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
