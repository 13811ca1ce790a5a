"""One fitted variant of a category: feature path (PSG-trained when configured), memory bank
and Gaussians, built from the good images by the stages backbone, psg, features, coreset
and gaussian. ``fit`` builds one variant per candidate configuration.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.method.backbone import create_feature_extractor
from model.method.config import FitConfig
from model.method.coreset import greedy_coreset
from model.method.defect_head import DefectHead
from model.method.features import FeaturePath, assemble, select_dims
from model.method.fusion import TokenFusion, build_fusion, fusion_channels
from model.method.gaussian import GaussianAccumulator, GaussianModel
from model.method.memory_bank import MemoryBank, flatten_patches
from model.reporting.progress import ProgressFactory
from model.runtime.execution import Timer
from model.runtime.imageio import preprocess, read_image, resize_rgb
from model.runtime.inspector import Branches, Inspector, normalization
from model.training.drift import drift_covariance
from model.training.psg import PSGReport, fine_tune, needs_training


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
    features: FeaturePath, files: Sequence[Path], config: FitConfig, mean, std, device, progress: ProgressFactory,
    nns: bool, gaussian: bool,
) -> tuple[torch.Tensor, GaussianAccumulator]:
    """NNS patches ``[N*h*w, Cn]`` (on CPU, when ``nns``) and the Gaussian moments of ``files`` (when ``gaussian``)."""
    patches, acc = [], GaussianAccumulator(config.gaussian.shift_tolerance)
    bar = progress("features", len(files))
    for images in batches(files, config.batch_size):
        x = preprocess(images, config.image_size, mean, std).to(device)
        nns_feats, gauss_feats = features(x)
        if nns:
            patches.append(flatten_patches(nns_feats).cpu())
        if gaussian:
            acc.update(gauss_feats)
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
    head: DefectHead | None = None
    # what an update goes on from (model.jobs.updatable): the extraction's whole memory bank and
    # Gaussian moments, whichever branches this variant scores with
    extraction_bank: MemoryBank | None = None
    moments: GaussianAccumulator | None = None

    @property
    def bank_size(self) -> int:
        return int(self.bank.bank.shape[0]) if self.bank is not None else 0

    def inspector(self, device: str) -> Inspector:
        return Inspector(self.config, self.features, Branches(self.bank, self.gaussian, self.head), None, self.mean,
                         self.std, device)

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        tensors: dict[str, dict[str, torch.Tensor]] = {"backbone": self.features.backbone.state_dict()}
        if isinstance(self.features.fusion, TokenFusion):
            tensors["fusion"] = self.features.fusion.state_dict()
        if self.bank is not None:
            tensors["memory_bank"] = self.bank.tensors()
        if self.gaussian is not None:
            tensors["gaussian"] = {**self.gaussian.tensors(), "dims": self.features.gauss_dims}
        if self.head is not None:
            tensors["defect_head"] = self.head.tensors()
        return tensors


@dataclass
class Parts:
    """One extraction of the training images: the feature path, the memory bank and the Gaussian
    moments, from which every candidate scoring's ``Variant`` is assembled without new features."""

    config: FitConfig
    features: FeaturePath
    mean: list[float]
    std: list[float]
    n_patches: int
    bank: MemoryBank | None
    moments: GaussianAccumulator | None
    psg: PSGReport | None
    drift: torch.Tensor | None = None  # [P, D, D]: the expected drift's feature covariance (training.drift)
    gaussians: dict[int, GaussianModel] = field(default_factory=dict)  # by shift tolerance

    def gaussian(self, shift_tolerance: int, watch: Timer) -> GaussianModel:
        if shift_tolerance not in self.gaussians:
            with watch.stage("gaussian"):
                self.gaussians[shift_tolerance] = GaussianModel(
                    *self.moments.finalize(self.config.gaussian.reg, shift_tolerance, self.drift))
        return self.gaussians[shift_tolerance]

    def variant(self, config: FitConfig, watch: Timer) -> Variant:
        """The fitted ``config`` (this config with other branch switches or shift tolerance)."""
        gaussian = self.gaussian(config.gaussian.shift_tolerance, watch) if config.gaussian.enabled else None
        return Variant(config, self.features, self.bank if config.nns.enabled else None, gaussian,
                       self.mean, self.std, self.n_patches, self.psg, extraction_bank=self.bank, moments=self.moments)


def fit_parts(config: FitConfig, files: Sequence[Path], device: str, progress: ProgressFactory, watch: Timer,
              nns: bool, gaussian: bool) -> Parts:
    """Feature path (PSG-trained when configured), memory bank (when ``nns``) and Gaussian moments
    (when ``gaussian``) from the good ``files``."""
    with watch.stage("backbone"):
        features, mean, std = build_feature_path(config)
        features = features.eval().to(device)
    psg = None
    if needs_training(config):
        with watch.stage("psg"):
            psg = train_psg(features, files, config, mean, std, device, progress)
    with watch.stage("features"):
        patches, acc = extract(features, files, config, mean, std, device, progress, nns, gaussian)
    bank = None
    if nns:
        with watch.stage("coreset"):
            bank = build_memory_bank(patches, config, progress)
    drift = None
    if gaussian:
        with watch.stage("drift"):
            drift = drift_covariance(features, drift_images(files, config), config, mean, std, device)
    return Parts(config, features, mean, std, int(patches.shape[0]), bank, acc if gaussian else None, psg, drift)


def drift_images(files: Sequence[Path], config: FitConfig) -> list[np.ndarray]:
    """``gaussian.drift_images`` of the good ``files`` (seeded), decoded at the model input size."""
    n = min(config.gaussian.drift_images, len(files))
    chosen = sorted(np.random.default_rng(config.seed + 4).choice(len(files), n, replace=False)) if n else []
    return [resize_rgb(read_image(str(files[i])), config.image_size) for i in chosen]


def fit_variant(
    config: FitConfig, files: Sequence[Path], device: str, progress: ProgressFactory, watch: Timer
) -> Variant:
    """Feature path (PSG-trained when configured), memory bank and Gaussians from the good ``files``."""
    parts = fit_parts(config, files, device, progress, watch, config.nns.enabled, config.gaussian.enabled)
    return parts.variant(config, watch)
