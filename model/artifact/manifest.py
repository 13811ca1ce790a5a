"""The manifest: a typed, versioned record of one artifact, built and parsed here only.

``manifest.json`` is ``Manifest.to_dict()``; ``Manifest.from_dict`` reads it back and is the
only reader of its keys. The fit builds a ``Manifest`` (``artifact_id`` and ``files`` are
filled in by ``store.write_artifact``); the Inspector, ``evaluate``, the registry and the
API read its fields. A manifest of another format version, or one that lacks a field, is
refused with a message that says to re-fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from model.method.calibration import Thresholds
from model.method.config import FitConfig

FORMAT_VERSION = 1


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete, tampered with or of an unknown format."""


class RollbackError(ArtifactError):
    """The live version has no parent to return to (it was fitted, or its parent is gone)."""


@dataclass(frozen=True)
class Normalization:
    mean: list[float]
    std: list[float]


@dataclass(frozen=True)
class DefectsRecord:
    """The labelled defect images a fit used (``fit --defects``)."""

    n: int
    per_type: dict[str, int]
    with_masks: bool
    files: list[str]  # "<type>/<file name>"
    sha256: list[str]


@dataclass(frozen=True)
class Training:
    data: str
    n_images: int
    n_fit: int
    n_holdout: int
    holdout_files: list[str]
    fingerprint: str
    defects: DefectsRecord | None = None
    skipped: list[str] = field(default_factory=list)  # "<file>: <reason>" of undecodable images left out
    sha256: list[str] = field(default_factory=list)  # of every good image learned from (an update skips these)
    image_size: list[int] | None = None  # width, height of the first training image (confirmations must match)

    @property
    def defect_hashes(self) -> list[str]:
        """SHA-256 of the labelled defect images (empty without)."""
        return self.defects.sha256 if self.defects is not None else []


@dataclass(frozen=True)
class CalibrationRecord:
    thresholds: Thresholds
    holdout_scores: dict[str, float]  # count, mean, std, min, p50, p95, max of the held-out goods
    validation: dict[str, float | None] | None = None  # with labelled defects: image/pixel AUROC, AU-PRO
    with_defects: dict[str, Any] | None = None  # with labelled defects: both thresholds and the policy applied


@dataclass(frozen=True)
class FitRecord:
    device: str
    n_patches: int
    bank_size: int
    seconds: dict[str, float]
    psg: dict[str, Any] | None = None  # PSG training report
    psg_selection: dict[str, Any] | None = None  # with psg.enabled="auto" and labelled defects
    selection: dict[str, Any] | None = None  # the scoring choice: candidates' validation figures, rule, choice
    head: dict[str, Any] | None = None  # the defect head: its weight's validation, training record (head_fit)


@dataclass(frozen=True)
class Lineage:
    """How an updated version came from its parent (``factory-inspect update``)."""

    parent: str  # the parent's artifact id
    at: str  # when, ISO 8601 UTC
    added_goods: list[str]  # SHA-256 of the good images learned
    added_defects: list[str]  # SHA-256 of the labelled defects added to the evidence
    held_out: int  # of the added goods, how many joined the held-out goods (calibration)
    chosen: str | None  # the scoring chosen now
    parent_chosen: str | None  # the parent's
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Manifest:
    category: str
    created_at: str
    config: FitConfig
    normalization: Normalization
    versions: dict[str, str]
    training: Training
    calibration: CalibrationRecord
    fit: FitRecord
    artifact_id: str = "unsaved"
    files: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256
    format_version: int = FORMAT_VERSION
    lineage: Lineage | None = None  # an updated version: its parent and what it added

    def published(self, artifact_id: str, files: dict[str, str]) -> Manifest:
        """This manifest as written: with its id and the hashes of its files."""
        return replace(self, artifact_id=artifact_id, files=dict(files))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``manifest.json``), keys in a stable order."""
        body = asdict(self)
        body["config"] = self.config.to_dict()
        head = {k: body.pop(k) for k in ("format_version", "category", "artifact_id", "created_at")}
        files = body.pop("files")
        return {**head, **body, "files": files}

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        """Parse ``manifest.json``; raises ``ArtifactError`` (with "re-fit") when it does not fit."""
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: manifest is not a JSON object; re-fit the category")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{where}: format version {version!r}, expected {FORMAT_VERSION}: "
                                f"this artifact was written by another release; re-fit the category")
        if not isinstance(data.get("files"), dict):
            raise ArtifactError(f"{where}: manifest lists no files; re-fit the category")
        try:
            return _parse(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: manifest does not match format {FORMAT_VERSION} "
                                f"({type(exc).__name__}: {exc}); re-fit the category") from exc


def _parse(d: dict[str, Any]) -> Manifest:
    training, calibration, fit = d["training"], d["calibration"], d["fit"]
    defects = training.get("defects")
    return Manifest(
        format_version=d["format_version"],
        category=str(d["category"]),
        artifact_id=str(d["artifact_id"]),
        created_at=str(d["created_at"]),
        config=FitConfig.from_dict(d["config"]),
        normalization=Normalization(**d["normalization"]),
        versions=dict(d["versions"]),
        training=Training(**{**training, "defects": DefectsRecord(**defects) if defects else None}),
        calibration=CalibrationRecord(
            thresholds=Thresholds(**calibration["thresholds"]),
            holdout_scores=dict(calibration["holdout_scores"]),
            validation=calibration.get("validation"),
            with_defects=calibration.get("with_defects"),
        ),
        fit=FitRecord(**fit),
        files=dict(d["files"]),
        lineage=Lineage(**d["lineage"]) if d.get("lineage") else None,
    )
