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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
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
from model.jobs.choice import Choice, Validation, calibrate, choose
from model.jobs.dataset import (
    TestSample,
    check_defect_masks,
    file_sha256,
    fingerprint,
    image_size,
    list_images,
    read_mask,
    split_decodable,
)
from model.jobs.selection import branches_needed
from model.jobs.updatable import state_tensors
from model.jobs.variant import Variant, fit_parts, fit_variant
from model.method.calibration import Thresholds, score_statistics
from model.method.config import AUTO, FitConfig
from model.reporting.progress import ProgressFactory, silent_progress
from model.runtime.execution import Timer
from model.runtime.imageio import read_image, resize_rgb

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


def validation_of(hold_files: Sequence[Path], defects: Sequence[TestSample], size: int) -> Validation:
    """The held-out goods and the labelled defects, decoded at the model input size."""
    return Validation(goods=[resize_rgb(read_image(str(f)), size) for f in hold_files],
                      defects=[resize_rgb(read_image(str(d.path)), size) for d in defects],
                      defect_masks=[read_mask(d, size) if d.mask_path is not None else None for d in defects],
                      defect_types=[d.defect for d in defects])


def fit_chosen(config: FitConfig, fit_files: Sequence[Path], validation: Validation, device: str,
               progress: ProgressFactory, watch: Timer) -> Choice:
    """One extraction of ``fit_files`` and the variant of it to publish (``choice.choose``), with a
    PSG variant to weigh when ``psg_variants`` asks for both."""
    psg_configs = psg_variants(config, bool(validation.defects))
    base = psg_configs[0]
    parts = fit_parts(base, fit_files, device, progress, watch, *branches_needed(base, len(validation.goods)))
    with_psg = None
    if len(psg_configs) == 2:
        def with_psg(scoring: FitConfig) -> Variant:
            return fit_variant(scoring.with_overrides({"psg.enabled": True}), fit_files, device, progress, watch)
    return choose(parts, base, validation, device, watch, with_psg)


def psg_variants(config: FitConfig, has_defects: bool) -> list[FitConfig]:
    """The configs to fit: ``psg.enabled="auto"`` means both (without PSG first) when there are
    labelled defects to choose with, and no PSG without them."""
    if config.psg.enabled != AUTO:
        return [config]
    off = config.with_overrides({"psg.enabled": False})
    return [off, config.with_overrides({"psg.enabled": True})] if has_defects else [off]


def check_head(config: FitConfig, defects: Sequence[TestSample]) -> None:
    """Refuse ``head.enabled=true`` without labelled defects, before any work."""
    if config.head.enabled is True and not defects:
        raise ValueError("head.enabled=true needs labelled defects: pass fit --defects <dir>")


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
    hashes = [file_sha256(f) for f in files]
    fit_files, hold_files = split_holdout(files, config)
    log.info("fitting %s on %d images, %d held out, %d labelled defects", category, len(fit_files),
             len(hold_files), len(defects))
    validation = validation_of(hold_files, defects, config.image_size)
    choice = fit_chosen(config, fit_files, validation, device, progress, watch)
    best = choice.chosen
    with watch.stage("calibrate"):
        thresholds, with_defects = calibrate(best, validation, config)
    manifest = Manifest(
        category=category,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=best.variant.config,
        normalization=Normalization(best.variant.mean, best.variant.std),
        versions=library_versions(),
        training=Training(data=str(Path(data).resolve()), n_images=len(files), n_fit=len(fit_files),
                          n_holdout=len(hold_files), holdout_files=[f.name for f in hold_files],
                          fingerprint=fingerprint(files, hashes), skipped=skipped, sha256=hashes,
                          defects=defects_record(defects) if defects else None, image_size=image_size(files[0])),
        calibration=CalibrationRecord(thresholds, score_statistics(best.scores[validation.labels == 0]), best.block,
                                      with_defects),
        fit=FitRecord(device=device, n_patches=best.variant.n_patches, bank_size=best.variant.bank_size,
                      seconds={k: round(v / 1000, 3) for k, v in watch.ms.items()},
                      psg=best.variant.psg.to_dict() if best.variant.psg is not None else None,
                      psg_selection=choice.psg_selection, selection=choice.selection, head=choice.head),
    )
    with watch.stage("write"):
        tensors = {**best.variant.tensors(), **state_tensors(best.variant, validation)}
        path = write_artifact(artifacts, category, manifest, tensors)
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
