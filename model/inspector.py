"""The inference object shared by ``evaluate`` and the server.

``Inspector.from_artifact(path, device)`` rebuilds the feature path, the scoring
branches and the map combiner from an artifact; ``inspect(images)`` runs a batch of RGB
images through them and returns one typed result per image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.artifact import Artifact, load_artifact
from model.backbone import frozen
from model.calibration import Thresholds
from model.config import FitConfig
from model.features import FeaturePath, feature_path_from_tensors
from model.gaussian import GaussianModel
from model.imageio import preprocess
from model.memory_bank import MemoryBank
from model.onnx_runtime import OrtFeaturePath, check_runtime
from model.postprocess import AnomalyMapCombiner, image_scores, normalized_score


@dataclass
class InspectionResult:
    """One image's verdict. Maps are at the model input resolution ``[S, S]``."""

    score: float
    normalized_score: float
    threshold: float
    is_anomalous: bool
    anomaly_map: np.ndarray  # float32 [S, S]
    mask: np.ndarray  # bool [S, S], anomaly_map > pixel threshold
    pixel_threshold: float
    timings_ms: dict[str, float] = field(default_factory=dict)  # stage times of the batch it ran in
    batch_size: int = 1


@dataclass
class Branches:
    """The scoring branches, each ``features [B, C, h, w] -> map [B, h, w]`` (None when off)."""

    nns: MemoryBank | None
    gaussian: GaussianModel | None

    def named(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in (("nns", self.nns), ("gaussian", self.gaussian)) if m is not None]


def normalization(backbone: nn.Module) -> tuple[list[float], list[float]]:
    """Input mean and std the backbone's pretrained weights expect."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))


class Timer:
    """Stage wall times in ms; synchronises CUDA so a stage's time is its own."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0


class Inspector:
    """Feature path + branches + AMC + thresholds, on one device."""

    def __init__(
        self,
        config: FitConfig,
        features: FeaturePath,
        branches: Branches,
        thresholds: Thresholds | None,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        manifest: dict[str, Any] | None = None,
        runtime: str = "torch",
    ) -> None:
        """``runtime``: ``"torch"`` runs the feature path in torch; ``"onnxruntime"`` exports it
        to ONNX (in memory) and runs it in an onnxruntime session (branches and AMC stay torch)."""
        self.runtime = check_runtime(runtime)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # TF32 moves scores by ~3e-3 relative: evaluate (CPU) and serve (CUDA) must agree to 1e-4.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.config = config
        self.features = self._feature_runner(frozen(features), config.image_size)
        self.branches = branches
        for _, module in branches.named():
            module.to(self.device)
        self.combiner = AnomalyMapCombiner(config.image_size, config.postprocess.sigma).to(self.device)
        self.thresholds = thresholds
        self.mean, self.std = list(mean), list(std)
        self.manifest = manifest or {}

    def _feature_runner(self, features: FeaturePath, image_size: int) -> FeaturePath | OrtFeaturePath:
        """The callable ``image [B, 3, S, S] -> (nns, gauss)`` for ``self.runtime`` on ``self.device``."""
        if self.runtime == "onnxruntime":
            return OrtFeaturePath.from_module(features.cpu(), image_size, self.device)
        return features.to(self.device)

    @classmethod
    def from_artifact(cls, path: Path | str | Artifact, device: str | torch.device = "cpu",
                      runtime: str = "torch") -> Inspector:
        check_runtime(runtime)
        artifact = path if isinstance(path, Artifact) else load_artifact(path)
        m = artifact.manifest
        config = FitConfig.from_dict(m["config"])
        t = artifact.tensors
        features = feature_path_from_tensors(config, t)
        branches = Branches(
            nns=MemoryBank(t["memory_bank"]["bank"]) if "memory_bank" in t else None,
            gaussian=GaussianModel.from_tensors(t["gaussian"]) if "gaussian" in t else None,
        )
        th = m["calibration"]["thresholds"]
        thresholds = Thresholds(**th)
        return cls(config, features, branches, thresholds, m["normalization"]["mean"], m["normalization"]["std"],
                   device, m, runtime=runtime)

    @property
    def artifact_id(self) -> str:
        return self.manifest.get("artifact_id", "unsaved")

    @torch.inference_mode()
    def maps(self, x: torch.Tensor, timer: Timer | None = None) -> torch.Tensor:
        """Normalised images ``[B, 3, S, S]`` -> final anomaly maps ``[B, S, S]``."""
        timer = timer or Timer(self.device)
        with timer.stage("features"):
            nns_feats, gauss_feats = self.features(x.to(self.device))
        inputs = {"nns": nns_feats, "gaussian": gauss_feats}
        branch_maps = []
        for name, module in self.branches.named():
            with timer.stage(name):
                branch_maps.append(module(inputs[name]))
        with timer.stage("amc"):
            return self.combiner(branch_maps)

    def inspect(self, images: Sequence[np.ndarray], threshold: float | None = None) -> list[InspectionResult]:
        """Score RGB ``uint8`` images ``[H, W, 3]`` (any sizes) as one batch.

        ``threshold`` overrides the calibrated image threshold for this call.
        """
        if self.thresholds is None:
            raise RuntimeError("inspector has no calibrated thresholds")
        if not images:
            return []
        timer = Timer(self.device)
        with timer.stage("preprocess"):
            x = preprocess(images, self.config.image_size, self.mean, self.std)
        final = self.maps(x, timer)
        with timer.stage("postprocess"):
            scores = image_scores(final).cpu().numpy().astype(np.float64)
            maps = final.float().cpu().numpy()
        t_img = self.thresholds.image if threshold is None else float(threshold)
        t_pix = self.thresholds.pixel
        timings = {k: round(v, 3) for k, v in timer.ms.items()}
        return [
            InspectionResult(
                score=float(s),
                normalized_score=normalized_score(float(s), t_img, self.thresholds.scale),
                threshold=t_img,
                is_anomalous=bool(s > t_img),
                anomaly_map=m,
                mask=m > t_pix,
                pixel_threshold=t_pix,
                timings_ms=timings,
                batch_size=len(images),
            )
            for s, m in zip(scores, maps, strict=True)
        ]
