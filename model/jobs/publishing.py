"""Fit into any artifact store: a local root, or ``s3://bucket/prefix``.

A local root is ``fit``'s own atomic publish. For a bucket the fit writes its artifact into
a temporary local root first, then ``RemoteStore.publish`` uploads the version and moves
the bucket's pointer last (readers see the old version or the new one, never a mix).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from model.artifact.remote import RemoteStore
from model.artifact.source import is_remote
from model.jobs.fit import FitReport, fit

log = logging.getLogger(__name__)


def publish_artifact(artifact: Path | str, url: str) -> str:
    """Upload a local artifact folder (``<root>/<category>``) to ``s3://bucket/prefix``; its artifact id."""
    return RemoteStore(url).publish(artifact)


def fit_into(data: Path | str, category: str, artifacts: Path | str, **kwargs) -> tuple[FitReport, str]:
    """``fit`` into ``artifacts`` (a folder or an ``s3://`` URL); the report and where it was published
    (for a bucket, ``report.artifact`` named the temporary folder, removed since)."""
    if not is_remote(artifacts):
        report = fit(data, category, artifacts, **kwargs)
        return report, str(report.artifact)
    with tempfile.TemporaryDirectory(prefix="factory-inspect-fit-") as root:
        report = fit(data, category, root, **kwargs)
        publish_artifact(report.artifact, str(artifacts))
    return report, f"{str(artifacts).rstrip('/')}/{category}"
