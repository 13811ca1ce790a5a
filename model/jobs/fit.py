"""The offline fit job: good images of one category (and a few labelled defects) -> a published artifact.

Stages: split (fit / held-out), backbone, psg (optional fine-tuning), features (backbone
pass, NNS patches collected, Gaussian moments streamed), coreset (memory bank), gaussian
(inverse covariances), calibrate (maps of the held-out goods and labelled defects through
the same ``Inspector`` the server uses, then thresholds), write (atomic publish). With
``psg.enabled="auto"`` and labelled defects, the stages up to calibrate run for both
variants and the better one on those images is published.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from model.reporting import metrics
from model.artifact.store import artifact_size_bytes, validate_category, write_artifact
from model.method.backbone import create_feature_extractor
from model.method.calibration import calibrate_on_good, calibrate_with_defects, score_statistics
from model.method.config import AUTO, FitConfig
from model.method.coreset import greedy_coreset
from model.jobs.dataset import TestSample, file_sha256, fingerprint, list_images, read_mask
from model.method.features import FeaturePath, assemble, select_dims
from model.method.fusion import TokenFusion, build_fusion, fusion_channels
from model.method.gaussian import GaussianAccumulator, GaussianModel
from model.jobs.host import keep_freed_memory
from model.runtime.imageio import preprocess, read_image, resize_rgb
from model.runtime.inspector import Branches, Inspector, Timer, normalization
from model.method.memory_bank import MemoryBank, flatten_patches
from model.method.amc import image_scores
from model.jobs.progress import ProgressFactory, silent_progress
from model.method.psg import PSGReport, fine_tune, needs_training

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


def batches(files: Sequence[Path], size: int) -> Iterator[list[np.ndarray]]:
    """Decoded RGB images in lists of ``size``."""
    for start in range(0, len(files), size):
        yield [read_image(str(f)) for f in files[start : start + size]]


def build_feature_path(config: FitConfig) -> tuple[FeaturePath, list[float], list[float]]:
    """Backbone with its pretrained weights, fusion and Gaussian dim selection (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    bb = config.backbone
    backbone = create_feature_extractor(bb.arch, bb.out_indices, bb.weights)
    mean, std = normalization(backbone)
    fusion = build_fusion(config, backbone)
    dims = select_dims(fusion_channels(fusion, backbone, config), config.gaussian.dims, config.seed)
    return assemble(backbone, config, fusion, dims), mean, std


def train_psg(
    features: FeaturePath, files: Sequence[Path], config: FitConfig, mean, std, device, progress: ProgressFactory
) -> PSGReport:
    """PSG fine-tuning of ``features`` on the good ``files`` (decoded and resized once, kept in memory)."""
    images = [resize_rgb(read_image(str(f)), config.image_size) for f in files]
    return fine_tune(features, images, config, mean, std, device, progress)


@torch.inference_mode()
def extract(
    features: FeaturePath, files: Sequence[Path], config: FitConfig, mean, std, device, progress: ProgressFactory
) -> tuple[torch.Tensor, GaussianAccumulator]:
    """NNS patches ``[N*h*w, Cn]`` (on CPU) and the Gaussian moments of ``files``."""
    patches, acc = [], GaussianAccumulator(config.gaussian.shift_tolerance)
    bar = progress("features", len(files))
    for images in batches(files, config.batch_size):
        x = preprocess(images, config.image_size, mean, std).to(device)
        nns, gauss = features(x)
        if config.nns.enabled:
            patches.append(flatten_patches(nns).cpu())
        if config.gaussian.enabled:
            acc.update(gauss)
        bar.update(len(images))
    bar.close()
    return (torch.cat(patches) if patches else torch.empty(0)), acc


def build_memory_bank(patches: torch.Tensor, config: FitConfig, progress: ProgressFactory) -> MemoryBank:
    """Greedy coreset of ``patches [N, C]`` (randomly capped at ``max_coreset_patches`` first)."""
    cap = config.nns.max_coreset_patches
    if patches.shape[0] > cap:
        gen = torch.Generator().manual_seed(config.seed)
        patches = patches[torch.randperm(patches.shape[0], generator=gen)[:cap]]
    n_select = max(1, round(config.nns.coreset_ratio * patches.shape[0]))
    bar = progress("coreset", n_select)
    idx = greedy_coreset(patches, n_select, config.nns.projection_dim, config.seed, on_step=lambda _: bar.update())
    bar.close()
    return MemoryBank(patches[idx].clone())


@torch.inference_mode()
def image_maps(inspector: Inspector, files: Sequence[Path], progress: ProgressFactory, desc: str) -> np.ndarray:
    """Final maps ``[N, S, S]`` of ``files``."""
    out = []
    bar = progress(desc, len(files))
    for images in batches(files, inspector.config.batch_size):
        x = preprocess(images, inspector.config.image_size, inspector.mean, inspector.std)
        out.append(inspector.maps(x).float().cpu().numpy())
        bar.update(len(images))
    bar.close()
    return np.concatenate(out)


@dataclass
class Variant:
    """One fitted configuration: feature path, scoring branches and the PSG training report."""

    config: FitConfig
    features: FeaturePath
    bank: MemoryBank | None
    gaussian: GaussianModel | None
    mean: list[float]
    std: list[float]
    n_patches: int
    psg: PSGReport | None

    def inspector(self, device: str) -> Inspector:
        return Inspector(self.config, self.features, Branches(self.bank, self.gaussian), None, self.mean, self.std,
                         device)

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        tensors: dict[str, dict[str, torch.Tensor]] = {"backbone": self.features.backbone.state_dict()}
        if isinstance(self.features.fusion, TokenFusion):
            tensors["fusion"] = self.features.fusion.state_dict()
        if self.bank is not None:
            tensors["memory_bank"] = self.bank.tensors()
        if self.gaussian is not None:
            tensors["gaussian"] = {**self.gaussian.tensors(), "dims": self.features.gauss_dims}
        return tensors


def fit_variant(
    config: FitConfig, files: Sequence[Path], device: str, progress: ProgressFactory, watch: Timer
) -> Variant:
    """Feature path (PSG-trained when configured), memory bank and Gaussians from the good ``files``."""
    with watch.stage("backbone"):
        features, mean, std = build_feature_path(config)
        features = features.eval().to(device)
    psg = None
    if needs_training(config):
        with watch.stage("psg"):
            psg = train_psg(features, files, config, mean, std, device, progress)
    with watch.stage("features"):
        patches, acc = extract(features, files, config, mean, std, device, progress)
    bank = None
    if config.nns.enabled:
        with watch.stage("coreset"):
            bank = build_memory_bank(patches, config, progress)
    gaussian = None
    if config.gaussian.enabled:
        with watch.stage("gaussian"):
            gaussian = GaussianModel(*acc.finalize(config.gaussian.reg))
    return Variant(config, features, bank, gaussian, mean, std, int(patches.shape[0]), psg)


def psg_variants(config: FitConfig, has_defects: bool) -> list[FitConfig]:
    """The configs to fit: ``psg.enabled="auto"`` means both (without PSG first) when there are
    labelled defects to choose with, and no PSG without them."""
    if config.psg.enabled != AUTO:
        return [config]
    off = config.with_overrides({"psg.enabled": False})
    return [off, config.with_overrides({"psg.enabled": True})] if has_defects else [off]


def prefer_psg(without: dict[str, float | None], with_psg: dict[str, float | None]) -> bool:
    """The selection rule: PSG is kept when the mean of its validation deltas (image AUROC,
    pixel AUROC, AU-PRO; those defined) is positive. BENCHMARKS.md ("Third round") measured it."""
    deltas = [with_psg[k] - v for k, v in without.items() if v is not None and with_psg[k] is not None]
    return float(np.mean(deltas)) > 0


def defects_summary(defects: Sequence[TestSample]) -> dict:
    per_type: dict[str, int] = {}
    for d in defects:
        per_type[d.defect] = per_type.get(d.defect, 0) + 1
    return {
        "n": len(defects),
        "per_type": per_type,
        "with_masks": all(d.mask_path is not None for d in defects),
        "files": [f"{d.defect}/{d.path.name}" for d in defects],
        "sha256": [file_sha256(d.path) for d in defects],
    }


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
) -> FitReport:
    """Fit ``category`` from ``<data>/train/good`` and publish ``<artifacts>/<category>``.

    ``defects``: labelled defect images (``dataset.list_defects``). With them, the
    thresholds maximise F1 on the held-out goods plus the defects, and ``psg.enabled="auto"``
    keeps PSG only where it scores better there (``prefer_psg``).
    Sets this process's malloc to keep freed memory (``host.keep_freed_memory``).
    """
    validate_category(category)
    config = config or FitConfig()
    keep_freed_memory()
    torch.manual_seed(config.seed)
    watch = Timer(torch.device(device))
    files = list_images(Path(data) / "train" / "good")
    fit_files, hold_files = split_holdout(files, config)
    log.info("fitting %s on %d images, %d held out, %d labelled defects", category, len(fit_files),
             len(hold_files), len(defects))

    labels = np.r_[np.zeros(len(hold_files), int), np.ones(len(defects), int)]
    masks = None
    if defects and all(d.mask_path is not None for d in defects):
        good_masks = [np.zeros((config.image_size,) * 2, bool)] * len(hold_files)
        masks = np.stack(good_masks + [read_mask(d, config.image_size) for d in defects])
    fitted = []  # (variant, maps, image scores, metrics) on the held-out goods + defects
    for variant_config in psg_variants(config, bool(defects)):
        variant = fit_variant(variant_config, fit_files, device, progress, watch)
        inspector = variant.inspector(device)
        with watch.stage("calibrate"):
            maps = image_maps(inspector, [*hold_files, *(d.path for d in defects)], progress, "calibrate")
            scores = image_scores(torch.from_numpy(maps)).numpy()
        block = metrics.metric_block(scores, labels, maps, masks) if defects else None
        fitted.append((variant, maps, scores, block))
    chosen = 1 if len(fitted) == 2 and prefer_psg(fitted[0][3], fitted[1][3]) else 0
    variant, maps, scores, block = fitted[chosen]
    cal = config.calibration
    with watch.stage("calibrate"):
        if defects:
            thresholds = calibrate_with_defects(scores, labels, maps, masks, cal.pixel_false_alarm_rate)
        else:
            thresholds = calibrate_on_good(scores, maps, cal.image_false_alarm_rate, cal.pixel_false_alarm_rate)
    good_scores = scores[labels == 0]

    manifest = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": variant.config.to_dict(),
        "normalization": {"mean": variant.mean, "std": variant.std},
        "versions": library_versions(),
        "training": {
            "data": str(Path(data).resolve()),
            "n_images": len(files),
            "n_fit": len(fit_files),
            "n_holdout": len(hold_files),
            "holdout_files": [f.name for f in hold_files],
            "fingerprint": fingerprint(files),
            "defects": defects_summary(defects) if defects else None,
        },
        "calibration": {
            "thresholds": thresholds.to_dict(),
            "holdout_scores": score_statistics(good_scores),
            "validation": block,
        },
        "fit": {
            "device": device,
            "n_patches": variant.n_patches,
            "bank_size": int(variant.bank.bank.shape[0]) if variant.bank is not None else 0,
            "seconds": {k: round(v / 1000, 3) for k, v in watch.ms.items()},
            "psg": variant.psg.to_dict() if variant.psg is not None else None,
            "psg_selection": {
                "rule": "mean of the validation deltas (image AUROC, pixel AUROC, AU-PRO) > 0",
                "validation": {"without_psg": fitted[0][3], "with_psg": fitted[1][3]},
                "chosen": "with_psg" if chosen else "without_psg",
            } if len(fitted) == 2 else None,
        },
    }
    with watch.stage("write"):
        path = write_artifact(artifacts, category, manifest, variant.tensors())
    seconds = {k: round(v / 1000, 3) for k, v in watch.ms.items()}
    seconds["total"] = round(sum(seconds.values()), 3)
    report = FitReport(
        artifact=path,
        artifact_id=path.resolve().name,
        seconds=seconds,
        bank_size=manifest["fit"]["bank_size"],
        n_patches=manifest["fit"]["n_patches"],
        artifact_bytes=artifact_size_bytes(path),
        n_fit=len(fit_files),
        n_holdout=len(hold_files),
        n_defects=len(defects),
        psg=variant.config.psg.enabled,
        psg_selection=manifest["fit"]["psg_selection"],
    )
    log.info("fit %s done in %.1f s: %s", category, seconds["total"], seconds)
    return report
