"""Where a server finds published artifacts: a local artifacts root or an S3 bucket.

``open_source(spec, cache)`` returns the right one for ``--artifacts``: a folder path is a
``LocalSource`` (``<root>/<category>``, ``model.artifact.store``), ``s3://bucket/prefix`` a
``RemoteSource`` (``model.artifact.remote``: fetched, hash-verified, cached locally). Both
answer the same four questions, so the server's registry does not care which it has:

- ``categories()``: the published category names;
- ``has(name)``: whether ``name`` is published;
- ``published_id(name)``: the artifact id published now (raises ``ArtifactError`` when it
  cannot be read), to tell whether a reload has anything to do;
- ``fetch(name)``: a local folder holding the published version (the Inspector's
  ``load_artifact`` verifies every hash again when it reads it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from model.artifact.manifest import ArtifactError
from model.artifact.store import list_categories, read_manifest, validate_category

S3_SCHEME = "s3://"


class ArtifactSource(Protocol):
    location: str  # for logs: the root folder or the s3:// URL

    def categories(self) -> list[str]: ...

    def has(self, name: str) -> bool: ...

    def published_id(self, name: str) -> str: ...

    def fetch(self, name: str) -> Path: ...

    def local_roots(self) -> list[Path]: ...


class LocalSource:
    """``<root>/<category>`` folders (or symlinks to ``.versions/...``) written by ``fit``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def categories(self) -> list[str]:
        return list_categories(self.root)

    def has(self, name: str) -> bool:
        validate_category(name)
        return (self.root / name).is_dir()

    def published_id(self, name: str) -> str:
        return read_manifest(self.root / validate_category(name)).artifact_id

    def fetch(self, name: str) -> Path:
        path = self.root / validate_category(name)
        if not path.is_dir():
            raise ArtifactError(f"no artifact published for {name}")
        return path

    def local_roots(self) -> list[Path]:
        """Folders whose paths must not appear in API errors."""
        return [self.root]


def is_remote(spec: Path | str) -> bool:
    return str(spec).startswith(S3_SCHEME)


def default_cache() -> Path:
    """Where fetched artifacts are kept when no cache folder is configured."""
    return Path(tempfile.gettempdir()) / f"factory-inspect-cache-{os.getuid()}"


def open_source(spec: Path | str, cache: Path | str | None = None) -> ArtifactSource:
    """The source for an ``--artifacts`` value: ``s3://bucket/prefix`` or a local folder."""
    if is_remote(spec):
        from model.artifact.remote import RemoteSource  # boto3 only when a bucket is used

        return RemoteSource(str(spec), Path(cache) if cache else default_cache())
    return LocalSource(spec)


def rollback(artifact: Path | str) -> tuple[str, str]:
    """Return ``<root>/<category>`` (or ``s3://bucket/prefix/<category>``) to the version it was
    updated from; (the version left, the version now live). ``RollbackError`` without a parent."""
    prefix, _, category = str(artifact).rstrip("/").rpartition("/")
    if is_remote(artifact):
        from model.artifact.remote import RemoteStore

        return RemoteStore(prefix).rollback(category)
    from model.artifact.store import rollback as rollback_local

    return rollback_local(Path(prefix or "."), category)
