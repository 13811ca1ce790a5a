"""The line teaches the model: a new version of a category that has learned confirmed goods (and
labelled defects), published atomically like a fit, with its parent recorded for rollback.

From the artifact alone (its fit-only files, ``model.jobs.updatable``), never the training folder:

* the new goods are split as a fit splits (``calibration.holdout_fraction`` held out); the rest go
  through the artifact's own feature path into the Gaussian's moments (merged exactly) and the
  memory bank (the greedy coreset goes on from the bank: the new patches farthest from it join,
  ``nns.coreset_ratio`` of them);
* the drift the Gaussian expects is measured again on the new goods and the held-out ones;
* the selection runs again on all the evidence: every held-out good, old and new, and every
  labelled defect, old and new (``choice.choose``); the thresholds are calibrated again;
* PSG stays as fitted (the backbone is the artifact's). The defect head is trained again only
  when new defects come; otherwise the parent's head is kept if the scoring stays, else dropped.

Images already learned (by SHA-256: the fit's training images and every earlier update's) are
skipped and reported. ``update_into`` does the same for an ``s3://`` artifact.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from model.artifact.manifest import ArtifactError, CalibrationRecord, DefectsRecord, FitRecord, Lineage, Manifest
from model.artifact.store import artifact_size_bytes, load_artifact, write_artifact
from model.jobs.choice import Validation, calibrate, choose, measure_all
from model.jobs.dataset import TestSample, check_defect_masks, file_sha256, read_mask
from model.jobs.fit import library_versions
from model.jobs.updatable import read_state, state_tensors
from model.jobs.variant import Parts, drift_images, extract
from model.method.calibration import score_statistics
from model.method.config import AUTO, FitConfig
from model.method.coreset import greedy_coreset
from model.method.defect_head import DefectHead
from model.method.features import feature_path_from_tensors
from model.method.memory_bank import MemoryBank
from model.reporting.progress import ProgressFactory, silent_progress
from model.runtime.execution import Timer
from model.runtime.imageio import read_image, resize_rgb
from model.training.drift import drift_covariance

log = logging.getLogger(__name__)


@dataclass
class UpdateReport:
    artifact: Path  # <root>/<category>, now the new version
    artifact_id: str
    parent: str
    added_goods: int = 0
    held_out: int = 0
    added_defects: int = 0
    duplicates: list[str] = field(default_factory=list)  # files skipped: learned already
    chosen: str | None = None
    parent_chosen: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    artifact_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def update(artifact: Path | str, goods: list[Path] = (), defects: list[TestSample] = (), device: str = "cpu",
           progress: ProgressFactory = silent_progress, on_stage=None) -> UpdateReport:
    """Publish a new version of the category ``artifact`` (``<root>/<category>``) that has learned
    the good images ``goods`` and the labelled ``defects`` (``dataset.list_defects``); ``on_stage``
    is told each stage's name as it starts."""
    artifact = Path(artifact)
    watch = Timer(torch.device(device), on_stage)
    with watch.stage("load"):
        parent = load_artifact(artifact, fit_only=True)
    m = parent.manifest
    acc, bank, evidence = read_state(parent.tensors, m)
    check_defect_masks(defects)
    known = set(m.training.sha256) | set(m.training.defects.sha256 if m.training.defects else [])
    new_goods, duplicates = _new(goods, known)
    new_defects, dup_defects = _new(defects, known | {file_sha256(g) for g in new_goods})
    duplicates += dup_defects
    if not new_goods and not new_defects:
        raise ValueError(f"nothing new to learn: {len(duplicates)} of the images were learned already"
                         if duplicates else "nothing to learn: give good images (--goods) or defects (--defects)")
    config = _base_config(m, bool(new_defects))
    fit_files, hold_files = _split(new_goods, config, len(known))
    dims = parent.tensors.get("moments", {}).get("dims")  # the Gaussian's dims, whichever scoring serves
    features = feature_path_from_tensors(
        config, {**parent.tensors, **({"gaussian": {"dims": dims}} if dims is not None else {})}).eval().to(device)
    mean, std = m.normalization.mean, m.normalization.std
    size = config.image_size
    validation = Validation(
        goods=[*evidence.goods, *(resize_rgb(read_image(str(f)), size) for f in hold_files)],
        defects=[*evidence.defects, *(resize_rgb(read_image(str(d.path)), size) for d in new_defects)],
        defect_masks=[*evidence.defect_masks,
                      *(read_mask(d, size) if d.mask_path is not None else None for d in new_defects)],
        defect_types=[*evidence.defect_types, *(d.defect for d in new_defects)])
    parts = _grown_parts(config, features, mean, std, acc, bank, fit_files, validation, m, device, progress, watch)
    choice = choose(parts, config, validation, device, watch)
    variant = choice.chosen.variant
    notes = []
    if not new_defects and "defect_head" in parent.tensors:
        if variant.config.scoring == m.config.scoring:
            variant = replace(variant, head=DefectHead.from_tensors(parent.tensors["defect_head"]),
                              config=variant.config.with_overrides({"head.enabled": True}))
            notes.append("the parent's defect head is kept (the scoring is unchanged)")
        else:
            notes.append(f"the parent's defect head is dropped: the scoring changed to {variant.config.scoring!r}")
    if variant is not choice.chosen.variant:  # the parent's head changes the maps calibration reads
        scores, maps = measure_all(variant.inspector(device), validation.images)
        choice.chosen = replace(choice.chosen, variant=variant, scores=scores, maps=maps)
    with watch.stage("calibrate"):
        thresholds, with_defects = calibrate(choice.chosen, validation, variant.config)
    chosen = variant.config.scoring
    lineage = Lineage(parent=m.artifact_id, at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      added_goods=[file_sha256(f) for f in new_goods],
                      added_defects=[file_sha256(d.path) for d in new_defects], held_out=len(hold_files),
                      chosen=chosen, parent_chosen=m.config.scoring, notes=notes)
    manifest = _manifest(m, variant, choice, thresholds, with_defects, validation, new_goods, new_defects,
                         fit_files, hold_files, lineage, device, watch)
    with watch.stage("write"):
        tensors = {**variant.tensors(), **state_tensors(variant, validation)}
        path = write_artifact(artifact.parent, m.category, manifest, tensors)
    seconds = {k: round(v / 1000, 3) for k, v in watch.ms.items()}
    seconds["total"] = round(sum(seconds.values()), 3)
    log.info("update of %s: %s -> %s in %.1f s", m.category, m.artifact_id, path.resolve().name, seconds["total"])
    return UpdateReport(path, path.resolve().name, m.artifact_id, len(new_goods), len(hold_files), len(new_defects),
                        [str(d) for d in duplicates], chosen, m.config.scoring, seconds, artifact_size_bytes(path),
                        notes)


def _new(items, known: set[str]) -> tuple[list, list]:
    """``items`` (paths, or samples with a ``path``) not in ``known`` by SHA-256 (nor repeated), and
    the others."""
    fresh, seen, dup = [], set(known), []
    for item in items:
        digest = file_sha256(getattr(item, "path", item))
        (dup if digest in seen else fresh).append(item)
        seen.add(digest)
    return fresh, [getattr(d, "path", d) for d in dup]


def _base_config(m: Manifest, new_defects: bool) -> FitConfig:
    """The config the choice runs with again: the scoring and the image score validated again when
    the fit chose them; the defect head trained again only with new defects."""
    mode = (m.fit.selection or {}).get("mode")
    overrides: dict = {"head.enabled": AUTO if new_defects and m.config.head.enabled is not False else False}
    if mode in ("auto", "fallback"):
        overrides.update({"scoring": AUTO, "postprocess.top_fraction": AUTO})
    return m.config.with_overrides(overrides)


def _split(goods: list[Path], config: FitConfig, salt: int) -> tuple[list[Path], list[Path]]:
    """The new goods split as a fit splits them: ``calibration.holdout_fraction`` held out (none of
    fewer than 4)."""
    n_hold = round(config.calibration.holdout_fraction * len(goods)) if len(goods) >= 4 else 0
    order = np.random.default_rng(config.seed + salt).permutation(len(goods))
    hold = set(order[:n_hold].tolist())
    return [g for i, g in enumerate(goods) if i not in hold], [g for i, g in enumerate(goods) if i in hold]


def _grown_parts(config, features, mean, std, acc, bank, fit_files, validation: Validation, m: Manifest, device,
                 progress, watch: Timer) -> Parts:
    """The parent's extraction with ``fit_files`` learned: moments merged, the bank extended."""
    patches = torch.empty(0)
    if fit_files:
        with watch.stage("features"):
            patches, more = extract(features, fit_files, config, mean, std, device, progress, bank is not None,
                                    acc is not None)
        if acc is not None:
            acc.merge(more)
    if bank is not None and len(patches):
        with watch.stage("coreset"):
            n_select = max(1, round(config.nns.coreset_ratio * patches.shape[0]))
            idx = greedy_coreset(patches, n_select, config.nns.projection_dim, config.seed, centres=bank)
            bank = torch.cat([bank, patches[idx]])
    drift = None
    if acc is not None:
        with watch.stage("drift"):
            images = [*drift_images(fit_files, config), *validation.goods]
            drift = drift_covariance(features, images[: config.gaussian.drift_images], config, mean, std, device)
    return Parts(config, features, mean, std, m.fit.n_patches + int(patches.shape[0]),
                 MemoryBank(bank) if bank is not None else None, acc, None, drift)


def _manifest(m: Manifest, variant, choice, thresholds, with_defects, validation: Validation, new_goods,
              new_defects, fit_files, hold_files, lineage: Lineage, device: str, watch: Timer) -> Manifest:
    t = m.training
    defects = t.defects
    if new_defects:
        old = defects or DefectsRecord(0, {}, True, [], [])
        per_type = dict(old.per_type)
        for d in new_defects:
            per_type[d.defect] = per_type.get(d.defect, 0) + 1
        defects = DefectsRecord(n=old.n + len(new_defects), per_type=per_type,
                                with_masks=old.with_masks and all(d.mask_path is not None for d in new_defects),
                                files=[*old.files, *(f"{d.defect}/{d.path.name}" for d in new_defects)],
                                sha256=[*old.sha256, *lineage.added_defects])
    training = replace(t, n_images=t.n_images + len(new_goods), n_fit=t.n_fit + len(fit_files),
                       n_holdout=t.n_holdout + len(hold_files),
                       holdout_files=[*t.holdout_files, *(f.name for f in hold_files)],
                       sha256=[*t.sha256, *lineage.added_goods], defects=defects)
    goods = choice.chosen.scores[validation.labels == 0]
    return replace(
        m, created_at=lineage.at, config=variant.config, versions=library_versions(), training=training,
        calibration=CalibrationRecord(thresholds, score_statistics(goods), choice.chosen.block, with_defects),
        fit=FitRecord(device=device, n_patches=variant.n_patches, bank_size=variant.bank_size,
                      seconds={k: round(v / 1000, 3) for k, v in watch.ms.items()}, psg=m.fit.psg,
                      psg_selection=m.fit.psg_selection, selection=choice.selection, head=choice.head),
        artifact_id="unsaved", files={}, lineage=lineage)


def update_into(artifact: str | Path, **kwargs) -> tuple[UpdateReport, str]:
    """``update`` of a local ``<root>/<category>`` or of ``s3://bucket/prefix/<category>``: for a
    bucket the live version is fetched (hash-verified) into a temporary root, updated there and
    published as the bucket's new version (the pointer moved last)."""
    from model.artifact.remote import RemoteStore
    from model.artifact.source import is_remote

    if not is_remote(artifact):
        report = update(artifact, **kwargs)
        return report, str(report.artifact)
    prefix, _, category = str(artifact).rstrip("/").rpartition("/")
    store = RemoteStore(prefix)
    live = store.pointer(category)
    if live is None:
        raise ArtifactError(f"no artifact published for {category} under {prefix}")
    with tempfile.TemporaryDirectory(prefix="factory-inspect-update-") as root:
        folder = Path(root) / category
        folder.mkdir()
        store.download(category, live, folder)
        report = update(folder, **kwargs)
        store.publish(report.artifact)
    return report, str(artifact)
