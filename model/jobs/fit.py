"""The offline fit job: good images of one category (and a few labelled defects) -> a published artifact.

Stages: split (fit / held-out), backbone, psg (optional fine-tuning), features (backbone
pass, NNS patches collected, Gaussian moments streamed), coreset (memory bank), gaussian
(inverse covariances) -- one ``Variant`` (``model.jobs.variant``) -- then calibrate
(scores and maps of the held-out goods and labelled defects through the Inspector the
server uses, then thresholds) and write (atomic publish). With ``psg.enabled="auto"`` and
labelled defects, a PSG variant of the chosen scoring is fitted too, and the self-checking
fit's rule (``model.jobs.selection``) decides which one is published; then, with
``head.enabled`` true or "auto", the defect head is trained on them (stage head,
``model.training.head_fit``) before calibration, from the validate stage's description of the
validation images where it has one (``model.training.described``).

The CLI calls ``model.jobs.host.keep_freed_memory`` before a fit (a process-wide switch).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import numpy as np
import torch

from model.artifact.manifest import (
    CalibrationRecord,
    DefectsRecord,
    FitRecord,
    Manifest,
    Normalization,
    Training,
)
from model.artifact.store import artifact_size_bytes, check_writable, validate_category, write_artifact
from model.jobs.dataset import (
    TestSample,
    check_defect_masks,
    file_sha256,
    fingerprint,
    list_images,
    read_mask,
    split_decodable,
)
from model.jobs.selection import branches_needed, select_psg, select_scoring
from model.jobs.variant import Variant, batches, fit_parts, fit_variant
from model.method.calibration import Thresholds, calibrate_on_good, calibrate_with_defects, score_statistics
from model.method.config import AUTO, FitConfig
from model.reporting import metrics
from model.reporting.progress import ProgressFactory, silent_progress
from model.runtime.execution import Timer
from model.runtime.inspector import Inspector
from model.training.described import Recording
from model.training.head_fit import fit_head
from model.training.validation_images import ValidationImages, load_validation_images

log = logging.getLogger(__name__)

@dataclass
class FitReport:
    artifact: Path
    artifact_id: str
    seconds: dict[str, float] = field(default_factory=dict)
    bank_size: int = 0
    n_patches: int = 0
    artifact_bytes: int = 0
    n_fit: int = 0
    n_holdout: int = 0
    n_defects: int = 0
    psg: bool = False
    psg_selection: dict | None = None  # with psg.enabled="auto" and labelled defects
    selection: dict | None = None  # the scoring choice (selection.select_scoring)
    head: dict | None = None  # the defect head (head_fit.fit_head), with labelled defects
    thresholds: Thresholds | None = None  # published
    with_defects: dict | None = None  # with labelled defects: the false-alarm and F1 thresholds, and which is used
    skipped: list[str] = field(default_factory=list)  # undecodable training images left out


@dataclass
class Validation:
    """The held-out goods followed by the labelled defects: what a variant is calibrated and chosen on."""

    files: list[Path]
    labels: np.ndarray  # [N] 0 good, 1 defect
    masks: np.ndarray | None  # [N, S, S] bool, when every defect has a mask


@dataclass
class Candidate:
    """A fitted variant with its scores ``[N]``, maps ``[N, S, S]`` and metrics on the validation set."""

    variant: Variant
    scores: np.ndarray
    maps: np.ndarray
    block: dict[str, float | None] | None  # None without labelled defects


def split_holdout(files: Sequence[Path], config: FitConfig) -> tuple[list[Path], list[Path]]:
    """Seeded split of the good images into (fit, held-out for calibration)."""
    cal = config.calibration
    n = len(files)
    n_hold = max(cal.min_holdout, round(cal.holdout_fraction * n))
    if n - n_hold < 2:
        raise ValueError(f"{n} good images are too few: need at least {cal.min_holdout + 2}")
    order = np.random.default_rng(config.seed).permutation(n)
    hold = sorted(order[:n_hold])
    keep = sorted(order[n_hold:])
    return [files[i] for i in keep], [files[i] for i in hold]


def validation_set(hold_files: Sequence[Path], defects: Sequence[TestSample], size: int) -> Validation:
    labels = np.r_[np.zeros(len(hold_files), int), np.ones(len(defects), int)]
    masks = None
    if defects and all(d.mask_path is not None for d in defects):
        good_masks = [np.zeros((size, size), bool)] * len(hold_files)
        masks = np.stack(good_masks + [read_mask(d, size) for d in defects])
    return Validation([*hold_files, *(d.path for d in defects)], labels, masks)


def inspect_files(inspector: Inspector, files: Sequence[Path], progress: ProgressFactory,
                  desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Image scores ``[N]`` and final maps ``[N, S, S]`` of ``files``, through the Inspector's
    own decoding, preprocessing and scoring: the path that serves."""
    scores, maps = [], []
    bar = progress(desc, len(files))
    for images in batches(files, inspector.config.batch_size):
        s, m, _ = inspector.measure(images)
        scores.append(s)
        maps.append(m)
        bar.update(len(images))
    bar.close()
    return np.concatenate(scores), np.concatenate(maps)


def psg_variants(config: FitConfig, has_defects: bool) -> list[FitConfig]:
    """The configs to fit: ``psg.enabled="auto"`` means both (without PSG first) when there are
    labelled defects to choose with, and no PSG without them."""
    if config.psg.enabled != AUTO:
        return [config]
    off = config.with_overrides({"psg.enabled": False})
    return [off, config.with_overrides({"psg.enabled": True})] if has_defects else [off]


def fit_chosen(config: FitConfig, fit_files: Sequence[Path], validation: Validation,
               defects: Sequence[TestSample], device: str, progress: ProgressFactory,
               watch: Timer) -> tuple[Candidate, dict, dict | None, dict | None]:
    """The variant to publish, scored on ``validation`` through its Inspector, with the records of
    the choices that made it: the scoring (``selection.select_scoring``), PSG when
    ``psg_variants`` asks for both (``selection.select_psg``), on the same validation images, and
    the defect head when ``wants_head`` (``head_fit.fit_head``)."""
    psg_configs = psg_variants(config, bool(defects))
    n_hold = len(validation.files) - len(defects)
    labelled_masks = validation.masks[n_hold:] if validation.masks is not None else None
    images = cache(lambda: load_validation_images(validation.files[:n_hold], validation.files[n_hold:],
                                                  labelled_masks, config))
    parts = fit_parts(psg_configs[0], fit_files, device, progress, watch, *branches_needed(psg_configs[0], n_hold))
    heads = bool(defects) and config.head.enabled is not False and parts.bank is not None
    recording = Recording(parts.features, parts.bank) if heads else None  # the head's, if it is trained
    scoring, selection = select_scoring(parts, psg_configs[0], n_hold, images, device, watch, recording)
    variant, psg_selection = parts.variant(scoring, watch), None
    if len(psg_configs) == 2:
        with_psg = fit_variant(scoring.with_overrides({"psg.enabled": True}), fit_files, device, progress, watch)
        keep, psg_selection = select_psg(variant.inspector(device), with_psg.inspector(device), images(),
                                         scoring, watch)
        variant = with_psg if keep else variant
    variant, head_record = attach_head(variant, images, defects, device, watch, recording)
    with watch.stage("calibrate"):
        scores, maps = inspect_files(variant.inspector(device), validation.files, progress, "calibrate")
    block = metrics.metric_block(scores, validation.labels, maps, validation.masks) if defects else None
    return Candidate(variant, scores, maps, block), selection, psg_selection, head_record


def attach_head(variant: Variant, images: Callable[[], ValidationImages], defects: Sequence[TestSample],
                device: str, watch: Timer, recording: Recording | None = None) -> tuple[Variant, dict | None]:
    """``variant`` with its defect head when ``wants_head`` (``head.enabled`` resolved to true or
    false in its config), and the manifest's ``fit.head`` record (None without labelled defects).
    The ``recording`` of the validate stage, when it holds this variant's description of the
    validation images, spares the head describing them again."""
    config = variant.config
    # taken in any case: the recording lets its batches go (a scoring without NNS takes nothing)
    recorded = recording.take(config.scoring, variant.features, variant.bank) if recording else None
    if wants_head(config, defects):
        with watch.stage("head"):
            masks = [read_mask(d, config.image_size) if d.mask_path is not None else None for d in defects]
            head, record = fit_head(variant.inspector(device), images(), masks, [d.defect for d in defects],
                                    config, recorded)
        if head is None:  # weight 0: the unsupervised map won, nothing to store or to run
            return replace(variant, config=config.with_overrides({"head.enabled": False})), record
        return replace(variant, head=head, config=config.with_overrides({"head.enabled": True})), record
    record = None
    if defects and config.head.enabled is not False:
        record = {"skipped": f"the chosen scoring {config.scoring!r} has no NNS branch, "
                             "which the defect head compares patches with"}
    return replace(variant, config=config.with_overrides({"head.enabled": False})), record


def wants_head(config: FitConfig, defects: Sequence[TestSample]) -> bool:
    """Whether the fit trains the defect head: ``head.enabled`` true or "auto", labelled defects,
    and the NNS branch in the chosen scoring (the head compares patches with its memory bank)."""
    return config.head.enabled is not False and bool(defects) and config.nns.enabled


def check_head(config: FitConfig, defects: Sequence[TestSample]) -> None:
    """Refuse ``head.enabled=true`` without labelled defects, before any work."""
    if config.head.enabled is True and not defects:
        raise ValueError("head.enabled=true needs labelled defects: pass fit --defects <dir>")


def calibrate(chosen: Candidate, validation: Validation, config: FitConfig,
              has_defects: bool) -> tuple[Thresholds, dict | None]:
    """Target false-alarm-rate thresholds on the held-out goods; with labelled defects F1's are
    computed too and recorded beside them (``calibration.with_defects`` says which is published)."""
    cal = config.calibration
    if has_defects:
        return calibrate_with_defects(chosen.scores, validation.labels, chosen.maps, validation.masks,
                                      cal.image_false_alarm_rate, cal.pixel_false_alarm_rate, cal.with_defects)
    return calibrate_on_good(chosen.scores, chosen.maps, cal.image_false_alarm_rate, cal.pixel_false_alarm_rate), None


def defects_record(defects: Sequence[TestSample]) -> DefectsRecord:
    per_type: dict[str, int] = {}
    for d in defects:
        per_type[d.defect] = per_type.get(d.defect, 0) + 1
    return DefectsRecord(
        n=len(defects),
        per_type=per_type,
        with_masks=all(d.mask_path is not None for d in defects),
        files=[f"{d.defect}/{d.path.name}" for d in defects],
        sha256=[file_sha256(d.path) for d in defects],
    )


def library_versions() -> dict[str, str]:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__}


def fit(
    data: Path | str,
    category: str,
    artifacts: Path | str,
    config: FitConfig | None = None,
    device: str = "cpu",
    progress: ProgressFactory = silent_progress,
    defects: Sequence[TestSample] = (),
    skip_bad_images: bool = False,
) -> FitReport:
    """Fit ``category`` from ``<data>/train/good`` and publish ``<artifacts>/<category>``.

    ``defects``: labelled defect images (``dataset.list_defects``). With them, the
    thresholds maximise F1 on the held-out goods plus the defects, and ``psg.enabled="auto"``
    keeps PSG only where the self-checking fit's rule prefers it (``selection.select_psg``). An image in ``train/good``
    that does not decode stops the fit with an error naming it, unless ``skip_bad_images``:
    then every image is decoded once first and the bad ones are left out and recorded.
    """
    validate_category(category)
    check_writable(artifacts)
    config = config or FitConfig()
    check_head(config, defects)
    check_defect_masks(defects)
    torch.manual_seed(config.seed)
    watch = Timer(torch.device(device))
    files, skipped = list_images(Path(data) / "train" / "good"), []
    if skip_bad_images:
        files, skipped = split_decodable(files)
        for line in skipped:
            log.warning("skipped an image that does not decode: %s", line)
    fit_files, hold_files = split_holdout(files, config)
    log.info("fitting %s on %d images, %d held out, %d labelled defects", category, len(fit_files),
             len(hold_files), len(defects))
    validation = validation_set(hold_files, defects, config.image_size)
    best, selection, psg_selection, head_record = fit_chosen(config, fit_files, validation, defects, device,
                                                             progress, watch)
    with watch.stage("calibrate"):
        thresholds, with_defects = calibrate(best, validation, config, bool(defects))
    manifest = Manifest(
        category=category,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=best.variant.config,
        normalization=Normalization(best.variant.mean, best.variant.std),
        versions=library_versions(),
        training=Training(data=str(Path(data).resolve()), n_images=len(files), n_fit=len(fit_files),
                          n_holdout=len(hold_files), holdout_files=[f.name for f in hold_files],
                          fingerprint=fingerprint(files), defects=defects_record(defects) if defects else None,
                          skipped=skipped),
        calibration=CalibrationRecord(thresholds, score_statistics(best.scores[validation.labels == 0]), best.block,
                                      with_defects),
        fit=FitRecord(device=device, n_patches=best.variant.n_patches, bank_size=best.variant.bank_size,
                      seconds={k: round(v / 1000, 3) for k, v in watch.ms.items()},
                      psg=best.variant.psg.to_dict() if best.variant.psg is not None else None,
                      psg_selection=psg_selection, selection=selection, head=head_record),
    )
    with watch.stage("write"):
        path = write_artifact(artifacts, category, manifest, best.variant.tensors())
    return report(path, manifest, watch, len(defects))


def report(path: Path, manifest: Manifest, watch: Timer, n_defects: int) -> FitReport:
    seconds = {k: round(v / 1000, 3) for k, v in watch.ms.items()}
    seconds["total"] = round(sum(seconds.values()), 3)
    log.info("fit %s done in %.1f s: %s", manifest.category, seconds["total"], seconds)
    return FitReport(
        artifact=path,
        artifact_id=path.resolve().name,
        seconds=seconds,
        bank_size=manifest.fit.bank_size,
        n_patches=manifest.fit.n_patches,
        artifact_bytes=artifact_size_bytes(path),
        n_fit=manifest.training.n_fit,
        n_holdout=manifest.training.n_holdout,
        n_defects=n_defects,
        skipped=manifest.training.skipped,
        psg=manifest.config.psg.enabled,
        psg_selection=manifest.fit.psg_selection,
        selection=manifest.fit.selection,
        head=manifest.fit.head,
        thresholds=manifest.calibration.thresholds,
        with_defects=manifest.calibration.with_defects,
    )
