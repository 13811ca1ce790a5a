"""The offline fit job: good images of one category -> a published artifact.

Stages: split (fit / held-out), features (backbone pass, NNS patches collected, Gaussian
moments streamed), coreset (memory bank), gaussian (inverse covariances), calibrate
(thresholds on the held-out images, through the same ``Inspector`` the server uses),
write (atomic publish).
"""

from __future__ import annotations

import hashlib
import logging
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from model.artifact import artifact_size_bytes, validate_category, write_artifact
from model.backbone import create_feature_extractor
from model.calibration import calibrate_on_good, score_statistics
from model.config import FitConfig
from model.coreset import greedy_coreset
from model.features import FeaturePath, assemble, select_dims
from model.fusion import TokenFusion, build_fusion, fusion_channels
from model.gaussian import GaussianAccumulator, GaussianModel
from model.imageio import preprocess, read_image, resize_rgb
from model.inspector import Branches, Inspector, Timer, normalization
from model.memory_bank import MemoryBank, flatten_patches
from model.postprocess import image_scores
from model.progress import ProgressFactory, silent_progress
from model.psg import PSGReport, fine_tune, needs_training

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


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


def list_images(folder: Path | str) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def fingerprint(files: Sequence[Path]) -> str:
    """SHA-256 over the names and contents of ``files``."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


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
def held_out_maps(inspector: Inspector, files: Sequence[Path], progress: ProgressFactory) -> np.ndarray:
    """Final maps ``[N, S, S]`` of the held-out images."""
    out = []
    bar = progress("calibrate", len(files))
    for images in batches(files, inspector.config.batch_size):
        x = preprocess(images, inspector.config.image_size, inspector.mean, inspector.std)
        out.append(inspector.maps(x).float().cpu().numpy())
        bar.update(len(images))
    bar.close()
    return np.concatenate(out)


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
) -> FitReport:
    """Fit ``category`` from ``<data>/train/good`` and publish ``<artifacts>/<category>``."""
    validate_category(category)
    config = config or FitConfig()
    torch.manual_seed(config.seed)
    watch = Timer(torch.device(device))
    files = list_images(Path(data) / "train" / "good")
    fit_files, hold_files = split_holdout(files, config)
    log.info("fitting %s on %d images, %d held out", category, len(fit_files), len(hold_files))

    with watch.stage("backbone"):
        features, mean, std = build_feature_path(config)
        features = features.eval().to(device)
    psg = None
    if needs_training(config):
        with watch.stage("psg"):
            psg = train_psg(features, fit_files, config, mean, std, device, progress)
    with watch.stage("features"):
        patches, acc = extract(features, fit_files, config, mean, std, device, progress)
    bank = None
    if config.nns.enabled:
        with watch.stage("coreset"):
            bank = build_memory_bank(patches, config, progress)
    gaussian = None
    if config.gaussian.enabled:
        with watch.stage("gaussian"):
            gaussian = GaussianModel(*acc.finalize(config.gaussian.reg))
    del acc

    inspector = Inspector(config, features, Branches(bank, gaussian), None, mean, std, device)
    with watch.stage("calibrate"):
        maps = held_out_maps(inspector, hold_files, progress)
        scores = image_scores(torch.from_numpy(maps)).numpy()
        cal = config.calibration
        thresholds = calibrate_on_good(scores, maps, cal.image_false_alarm_rate, cal.pixel_false_alarm_rate)

    tensors: dict[str, dict[str, torch.Tensor]] = {"backbone": features.backbone.state_dict()}
    if isinstance(features.fusion, TokenFusion):
        tensors["fusion"] = features.fusion.state_dict()
    if bank is not None:
        tensors["memory_bank"] = bank.tensors()
    if gaussian is not None:
        tensors["gaussian"] = {**gaussian.tensors(), "dims": features.gauss_dims}
    manifest = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "normalization": {"mean": mean, "std": std},
        "versions": library_versions(),
        "training": {
            "data": str(Path(data).resolve()),
            "n_images": len(files),
            "n_fit": len(fit_files),
            "n_holdout": len(hold_files),
            "holdout_files": [f.name for f in hold_files],
            "fingerprint": fingerprint(files),
        },
        "calibration": {
            "thresholds": thresholds.to_dict(),
            "holdout_scores": score_statistics(scores),
        },
        "fit": {
            "device": device,
            "n_patches": int(patches.shape[0]) if config.nns.enabled else 0,
            "bank_size": int(bank.bank.shape[0]) if bank is not None else 0,
            "seconds": {k: round(v / 1000, 3) for k, v in watch.ms.items()},
            "psg": psg.to_dict() if psg is not None else None,
        },
    }
    with watch.stage("write"):
        path = write_artifact(artifacts, category, manifest, tensors)
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
    )
    log.info("fit %s done in %.1f s: %s", category, seconds["total"], seconds)
    return report
