"""The inference object shared by ``evaluate``, the fit's calibration and the server.

``Inspector.from_artifact(path, device)`` rebuilds the feature path, the scoring
branches and the map combiner from an artifact; ``inspect(images)`` runs a batch of RGB
images through them and returns one ``InspectionResult`` per image, whose ``verdict()``
is the complete decision (``model.runtime.verdict``).

On CUDA (torch runtime) images are resized on the device, the backbone may run in bf16 or
fp16 (``configure_execution``; fp32 by default, so served scores match CPU evaluation),
and the model path from input to final map replays as one CUDA graph per batch size.
A process serving on CUDA calls ``model.runtime.process.configure_device`` at start-up.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.artifact.manifest import Manifest
from model.artifact.store import Artifact, load_artifact
from model.method.amc import AnomalyMapCombiner, image_scores
from model.method.backbone import frozen
from model.method.calibration import Thresholds
from model.method.config import FitConfig
from model.method.defect_head import DefectHead
from model.method.features import FeaturePath, feature_path_from_tensors
from model.method.gaussian import GaussianModel
from model.method.memory_bank import MemoryBank
from model.runtime.execution import MAX_GRAPH_BATCH, GraphedMaps, Timer, check_precision, no_stage, to_host
from model.runtime.imageio import preprocess, preprocess_on_device
from model.runtime.onnx_runtime import OrtFeaturePath, check_runtime
from model.runtime.verdict import InspectionResult


@dataclass
class Branches:
    """The scoring branches, each ``features [B, C, h, w] -> map [B, h, w]`` (None when off)."""

    nns: MemoryBank | None
    gaussian: GaussianModel | None
    head: DefectHead | None = None  # boosts the map with the labelled defects (needs nns)

    def named(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in (("nns", self.nns), ("gaussian", self.gaussian)) if m is not None]

    @classmethod
    def from_tensors(cls, tensors: dict[str, dict[str, torch.Tensor]]) -> Branches:
        """The branches an artifact's tensors hold (``memory_bank``, ``gaussian``, ``defect_head``)."""
        return cls(nns=MemoryBank(tensors["memory_bank"]["bank"]) if "memory_bank" in tensors else None,
                   gaussian=GaussianModel.from_tensors(tensors["gaussian"]) if "gaussian" in tensors else None,
                   head=DefectHead.from_tensors(tensors["defect_head"]) if "defect_head" in tensors else None)


def normalization(backbone: nn.Module) -> tuple[list[float], list[float]]:
    """Input mean and std the backbone's pretrained weights expect."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))


class SharedMaps:
    """The branch outputs of one batch by branch module: inspectors built on the same modules
    compute each once (``Inspector.describe``)."""

    def __init__(self) -> None:
        self._out: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def nns(self, bank: MemoryBank, features: torch.Tensor, nearest: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Distance ``[B, h, w]`` and (when ``nearest``, else maybe None) the nearest vectors."""
        known = self._out.get(id(bank))
        if known is None or (nearest and known[1] is None):
            known = bank.search(features) if nearest else (bank(features), None)
            self._out[id(bank)] = known
        return known

    def map(self, module: nn.Module, features: torch.Tensor) -> torch.Tensor:
        if id(module) not in self._out:
            self._out[id(module)] = (module(features), None)
        return self._out[id(module)][0]


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
        manifest: Manifest | None = None,
        runtime: str = "torch",
        precision: str = "fp32",
        cuda_graphs: bool = True,
    ) -> None:
        """``runtime``: ``"torch"`` runs the feature path in torch; ``"onnxruntime"`` exports it
        to ONNX (in memory) and runs it in an onnxruntime session (branches and AMC stay torch).
        ``precision`` and ``cuda_graphs``: see ``configure_execution``."""
        self.runtime = check_runtime(runtime)
        self.device = torch.device(device)
        self.config = config
        self._fp32_features = self._feature_runner(frozen(features), config.image_size)
        self._branches = branches
        for _, module in branches.named():
            module.to(self.device)
        if branches.head is not None:
            branches.head.to(self.device)
        self._combiner = AnomalyMapCombiner(config.image_size, config.postprocess.sigma).to(self.device)
        self.thresholds = thresholds
        self.mean, self.std = list(mean), list(std)
        self.manifest = manifest
        self.configure_execution(precision, cuda_graphs)

    @property
    def _cuda_torch(self) -> bool:
        return self.device.type == "cuda" and self.runtime == "torch"

    def configure_execution(self, precision: str = "fp32", cuda_graphs: bool = True,
                            channels_last: bool = True) -> None:
        """How the model path runs; only the torch runtime on CUDA has choices.

        ``precision``: the backbone's dtype, ``fp32`` (default), ``bf16`` or ``fp16``; the
        branches, AMC and maps stay float32. ``cuda_graphs``: replay the model path as CUDA
        graphs (batches up to ``MAX_GRAPH_BATCH``). ``channels_last``: NHWC activations.
        """
        self.precision = precision
        self.dtype = check_precision(precision, self.device, self.runtime)
        self.memory_format = torch.channels_last if self._cuda_torch and channels_last else torch.preserve_format
        features = self._fp32_features
        if self.dtype != torch.float32 or self.memory_format == torch.channels_last:
            features = copy.deepcopy(features).to(dtype=self.dtype, memory_format=self.memory_format)
        self.features = features
        self._graphs = GraphedMaps(self._model_path) if self._cuda_torch and cuda_graphs else None

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
        features = feature_path_from_tensors(m.config, artifact.tensors)
        return cls(m.config, features, Branches.from_tensors(artifact.tensors), m.calibration.thresholds,
                   m.normalization.mean, m.normalization.std, device, m, runtime=runtime)

    @property
    def head(self) -> DefectHead | None:
        """The defect head that boosts the map (None: none)."""
        return self._branches.head

    def with_head(self, head: DefectHead | None) -> Inspector:
        """This inspector with another defect head (None: none), on the same feature path and branches."""
        other = copy.copy(self)
        other._branches = replace(self._branches, head=head)
        if head is not None:
            head.to(self.device)
        other.configure_execution(self.precision, self._graphs is not None)
        return other

    @property
    def artifact_id(self) -> str:
        return self.manifest.artifact_id if self.manifest is not None else "unsaved"

    @torch.inference_mode()
    def maps(self, x: torch.Tensor, timer: Timer | None = None) -> torch.Tensor:
        """Normalised images ``[B, 3, S, S]`` -> final anomaly maps ``[B, S, S]`` (float32).

        Stage times go to ``timer``: features, each branch and amc, or one ``model`` stage
        when the path replays as a CUDA graph.
        """
        timer = timer or Timer(self.device)
        x = x.to(self.device, self.dtype, memory_format=self.memory_format)
        if self._graphs is not None and x.shape[0] <= MAX_GRAPH_BATCH:
            with timer.stage("model"):
                return self._graphs(x)
        return self._model_path(x, timer.stage)

    def _model_path(self, x: torch.Tensor,
                    stage: Callable[[str], AbstractContextManager] = no_stage) -> torch.Tensor:
        """Model input ``[B, 3, S, S]`` on the device -> final maps ``[B, S, S]``; no host sync but ``stage``'s."""
        with stage("features"):
            inputs = self.branch_inputs(x)
        head = self._branches.head
        described = self.describe(inputs, nearest=head is not None, stage=stage)
        boost = None
        if head is not None:
            with stage("head"):
                boost = head.weight * head(inputs["nns"], described["nearest"], described.get("gaussian"))
        with stage("amc"):
            return self.final_maps(described, boost)

    def branch_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model input ``[B, 3, S, S]`` on the device -> each branch's float32 features ``[B, C, h, w]``."""
        nns_feats, gauss_feats = (f.float() for f in self.features(x))
        return {"nns": nns_feats, "gaussian": gauss_feats}

    def describe(self, inputs: dict[str, torch.Tensor], shared: SharedMaps | None = None, nearest: bool = False,
                 stage: Callable[[str], AbstractContextManager] = no_stage) -> dict[str, torch.Tensor]:
        """Branch inputs -> this inspector's branch outputs: ``nns``, the distance to the nearest bank
        vector ``[B, h, w]``, and with ``nearest`` that vector ``[B, C, h, w]`` (NNS branch);
        ``gaussian``, the Mahalanobis map ``[B, h, w]`` (Gaussian branch).

        ``shared``, one per batch, lets inspectors built on the same branch modules (the fit's
        candidates, from one feature extraction) compute each output once."""
        shared = SharedMaps() if shared is None else shared
        out: dict[str, torch.Tensor] = {}
        for name, module in self._branches.named():
            with stage(name):
                if name == "nns":
                    out["nns"], found = shared.nns(module, inputs["nns"], nearest)
                    if nearest:
                        out["nearest"] = found
                else:
                    out[name] = shared.map(module, inputs[name])
        return out

    def final_maps(self, described: dict[str, torch.Tensor], boost: torch.Tensor | None = None) -> torch.Tensor:
        """This inspector's branch outputs (``describe``) -> final maps ``[B, S, S]`` (AMC), times
        ``1 + boost`` (``[B, h, w]``, a defect head's weighted probability) when given."""
        return self._combiner([described[name] for name, _ in self._branches.named()], boost)

    def boosted(self, final: torch.Tensor, boost: torch.Tensor | None) -> torch.Tensor:
        """Final maps without a boost ``[B, S, S]`` -> as ``final_maps`` with ``boost``: for trying
        several boosts on one map."""
        return self._combiner.boosted(final, boost)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB ``uint8`` images -> model input ``[B, 3, S, S]``; resized on the device when it is CUDA."""
        size = self.config.image_size
        if self._cuda_torch:
            return preprocess_on_device(images, size, self.mean, self.std, self.device)
        return preprocess(images, size, self.mean, self.std)

    def measure(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """RGB ``uint8`` images ``[H, W, 3]`` (any sizes) -> image scores ``[B]`` (float64), final
        maps ``[B, S, S]`` (float32) and the batch's stage times in ms. No thresholds needed:
        the fit calibrates on exactly this path."""
        timer = Timer(self.device)
        with timer.stage("preprocess"):
            x = self.preprocess(images)
        final = self.maps(x, timer)
        with timer.stage("postprocess"):
            scores = to_host(image_scores(final, self.config.postprocess.image_top_fraction)).astype(np.float64)
            maps = to_host(final)
        return scores, maps, {k: round(v, 3) for k, v in timer.ms.items()}

    def inspect(self, images: Sequence[np.ndarray], threshold: float | None = None) -> list[InspectionResult]:
        """Score RGB ``uint8`` images ``[H, W, 3]`` (any sizes) as one batch.

        ``threshold`` overrides the calibrated image threshold for this call.
        """
        if self.thresholds is None:
            raise RuntimeError("inspector has no calibrated thresholds")
        if not images:
            return []
        scores, maps, timings = self.measure(images)
        t_img = self.thresholds.image if threshold is None else float(threshold)
        return [
            InspectionResult(score=float(s), anomaly_map=m, thresholds=self.thresholds, threshold=t_img,
                             artifact_id=self.artifact_id, timings_ms=timings, batch_size=len(images))
            for s, m in zip(scores, maps, strict=True)
        ]
