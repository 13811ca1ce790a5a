"""Artifacts in S3-compatible object storage: publish, list, fetch with hash checks, cache.

Layout under ``s3://<bucket>/<prefix>``::

    <category>/versions/<artifact id>/manifest.json, *.safetensors    (immutable once written)
    <category>/LATEST                                                 {"artifact_id": ...}: the pointer

**Publishing** uploads a verified local artifact folder as a new version (tensors first,
then its manifest) and writes the pointer object last. One S3 PUT replaces an object
atomically, so a reader that follows the pointer only ever finds a complete version: a
publish killed midway leaves the previous pointer, and the previous version, in place.
The two newest versions of a category are kept (the live one and the one before it);
older ones are deleted after the pointer moved.

**Fetching** follows the pointer, downloads the manifest and the files it lists into a
temporary folder of the local cache, verifies every file's SHA-256 with the local loader's
own check (``store.verify_files``), and renames the folder into
``<cache>/<category>/<artifact id>``. A tampered or missing object raises
``ArtifactError`` (the server answers 503 for that category). A cached version is reused;
``load_artifact`` verifies its hashes again when the Inspector reads it.

The S3 client is boto3's, configured the usual way: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` and, for MinIO, Ceph or moto,
``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from model.artifact.manifest import ArtifactError, Manifest, RollbackError
from model.artifact.store import KEEP_VERSIONS, MANIFEST, read_manifest, validate_category, verify_files

log = logging.getLogger(__name__)

POINTER = "LATEST"
VERSIONS = "versions"


def s3_client():
    """A boto3 S3 client from the environment (raises a clear error without boto3)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ArtifactError("s3:// artifacts need boto3: pip install 'factory-inspect[cluster]'") from exc
    return boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``) without slashes at the ends."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    return parsed.netloc, parsed.path.strip("/")


class RemoteStore:
    """The objects of one ``s3://bucket/prefix``: pointers, versions, uploads and downloads."""

    def __init__(self, url: str, client=None) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_url(url)
        self.client = client or s3_client()

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    # -- reading ------------------------------------------------------------------------------

    def categories(self) -> list[str]:
        """Categories with a pointer object, from one paginated listing."""
        names = set()
        base = self.key() + "/" if self.prefix else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                category, _, rest = item["Key"][len(base):].partition("/")
                if rest == POINTER and _valid(category):
                    names.add(category)
        return sorted(names)

    def pointer(self, category: str) -> str | None:
        """The artifact id ``<category>/LATEST`` names, or None when there is no pointer."""
        try:
            body = self._get(self.key(validate_category(category), POINTER))
        except FileNotFoundError:
            return None
        try:
            artifact_id = json.loads(body)["artifact_id"]
            return validate_category(artifact_id)  # same alphabet: never a path
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{self.url}/{category}/{POINTER} is not a valid pointer") from exc

    def download(self, category: str, artifact_id: str, dest: Path) -> None:
        """Download version ``artifact_id`` into the empty folder ``dest`` and verify every hash."""
        version = self.key(category, VERSIONS, artifact_id)
        try:
            (dest / MANIFEST).write_bytes(self._get(f"{version}/{MANIFEST}"))
        except FileNotFoundError as exc:
            raise ArtifactError(f"{category}: version {artifact_id} has no {MANIFEST} in the bucket") from exc
        manifest = read_manifest(dest)
        if manifest.artifact_id != artifact_id:
            raise ArtifactError(f"{category}: the manifest of version {artifact_id} names {manifest.artifact_id}")
        for name in manifest.files:
            if Path(name).name != name:  # checked before any download: never a path outside dest
                raise ArtifactError(f"{category}: manifest names a file outside the artifact: {name!r}")
            try:
                (dest / name).write_bytes(self._get(f"{version}/{name}"))
            except FileNotFoundError as exc:
                raise ArtifactError(f"{category}: missing file {name} in the bucket") from exc
        verify_files(dest, manifest)  # the local loader's check, file by file

    # -- writing ------------------------------------------------------------------------------

    def publish(self, artifact: Path | str, category: str | None = None) -> str:
        """Upload a local artifact folder as a new version of ``category`` (default: the one it
        was fitted as), then move the pointer; returns its artifact id."""
        folder = Path(artifact).resolve()
        manifest = read_manifest(folder)
        verify_files(folder, manifest)  # never publish what a server would refuse
        category = validate_category(category or manifest.category)
        version = self.key(category, VERSIONS, manifest.artifact_id)
        for name in manifest.files:
            self.client.upload_file(str(folder / name), self.bucket, f"{version}/{name}")
        self.client.upload_file(str(folder / MANIFEST), self.bucket, f"{version}/{MANIFEST}")
        previous = self.pointer(category)
        self._point(category, manifest.artifact_id)
        self._prune(category, keep={manifest.artifact_id, previous, manifest.lineage.parent if manifest.lineage else None})
        return manifest.artifact_id

    def rollback(self, category: str) -> tuple[str, str]:
        """Point ``category`` back at the version its live one was updated from; returns (the
        version left, the version now live). ``RollbackError`` without a kept parent."""
        live = self.pointer(category)
        if live is None:
            raise ArtifactError(f"no artifact published for {category} under {self.url}")
        manifest = self._manifest(category, live)
        parent = manifest.lineage.parent if manifest.lineage else None
        if parent is None:
            raise RollbackError(f"{category}: the live version {live} was fitted, not updated: "
                                "there is no parent to return to")
        try:
            self._manifest(category, parent)
        except FileNotFoundError as exc:
            raise RollbackError(f"{category}: the parent version {parent} is no longer kept") from exc
        self._point(category, parent)
        return live, parent

    def _manifest(self, category: str, artifact_id: str) -> Manifest:
        return Manifest.from_dict(json.loads(self._get(self.key(category, VERSIONS, artifact_id, MANIFEST))))

    def _point(self, category: str, artifact_id: str) -> None:
        pointer = {"artifact_id": artifact_id, "published_at": datetime.now(timezone.utc).isoformat()}
        self.client.put_object(Bucket=self.bucket, Key=self.key(category, POINTER),
                               Body=json.dumps(pointer).encode(), ContentType="application/json")
        log.info("%s/%s now points at %s", self.url, category, artifact_id)

    def _prune(self, category: str, keep: set[str | None]) -> None:
        """Delete versions of ``category`` beyond the newest ``KEEP_VERSIONS``; those in ``keep``
        (the live one, the one it replaced, the parent it was updated from) are always kept."""
        base = self.key(category, VERSIONS) + "/"
        newest: dict[str, datetime] = {}
        keys: dict[str, list[str]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                version = item["Key"][len(base):].partition("/")[0]
                keys.setdefault(version, []).append(item["Key"])
                newest[version] = max(newest.get(version, item["LastModified"]), item["LastModified"])
        kept = keep - {None}
        others = sorted((v for v in newest if v not in kept), key=newest.__getitem__, reverse=True)
        for old in others[max(0, KEEP_VERSIONS - len(kept)):]:
            for start in range(0, len(keys[old]), 1000):
                chunk = [{"Key": k} for k in keys[old][start:start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})

    def _get(self, key: str) -> bytes:
        """An object's bytes; ``FileNotFoundError`` when it does not exist."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(key) from exc


def _valid(name: str) -> bool:
    try:
        validate_category(name)
    except ValueError:
        return False
    return True


class RemoteSource:
    """The serving view of a bucket: published categories, fetched into a local cache."""

    def __init__(self, url: str, cache: Path, store: RemoteStore | None = None) -> None:
        self.store = store or RemoteStore(url)
        self.location = self.store.url
        self.cache = Path(cache)

    def categories(self) -> list[str]:
        return self.store.categories()

    def has(self, name: str) -> bool:
        return self.store.pointer(name) is not None

    def published_id(self, name: str) -> str:
        artifact_id = self.store.pointer(name)
        if artifact_id is None:
            raise ArtifactError(f"no artifact published for {name}")
        return artifact_id

    def fetch(self, name: str) -> Path:
        """The local folder of the version published now: from the cache, or downloaded and verified."""
        artifact_id = self.published_id(name)
        final = self.cache / name / artifact_id
        if (final / MANIFEST).is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{artifact_id}-", dir=final.parent))
        try:
            self.store.download(name, artifact_id, tmp)
            tmp.rename(final)  # another fetch may have won: its copy is as good as ours
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("fetched %s/%s (%s) into %s", self.location, name, artifact_id, final)
        return final

    def local_roots(self) -> list[Path]:
        return [self.cache]
