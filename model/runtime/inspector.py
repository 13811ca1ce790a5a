"""The inference object shared by ``evaluate`` and the server.

``Inspector.from_artifact(path, device)`` rebuilds the feature path, the scoring
branches and the map combiner from an artifact; ``inspect(images)`` runs a batch of RGB
images through them and returns one typed result per image.

On CUDA (torch runtime) images are resized on the device, the backbone may run in bf16 or
fp16 (``configure_execution``; fp32 by default, so served scores match CPU evaluation),
and the model path from input to final map replays as one CUDA graph per batch size.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.artifact.store import Artifact, load_artifact
from model.method.backbone import frozen
from model.method.calibration import Thresholds
from model.method.config import FitConfig
from model.method.features import FeaturePath, feature_path_from_tensors
from model.method.gaussian import GaussianModel
from model.runtime.imageio import preprocess, preprocess_on_device
from model.method.memory_bank import MemoryBank
from model.runtime.onnx_runtime import OrtFeaturePath, check_runtime
from model.method.amc import AnomalyMapCombiner, normalized_score

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_GRAPH_BATCH = 64  # larger batches run eagerly: launch overhead is small next to their work


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


def check_precision(precision: str, device: torch.device, runtime: str) -> torch.dtype:
    """The backbone dtype for ``precision``; reduced precision needs the torch runtime on CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    if precision != "fp32" and (device.type != "cuda" or runtime != "torch"):
        raise ValueError(f"precision {precision} needs the torch runtime on a CUDA device")
    return PRECISIONS[precision]


class GraphedMaps:
    """CUDA-graph replays of ``fn: x [B, 3, S, S] -> maps [B, S, S]``, one graph per input
    shape and dtype, captured at first use. All graphs share one memory pool: they replay
    one at a time and each output is copied out before the next replay.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """Warm up on a side stream (cuDNN autotuning, lazy init), then capture ``fn`` on ``x``'s shape."""
        static_in = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.fn(static_in)
        log.info("captured a CUDA graph for input %s %s", tuple(x.shape), x.dtype)
        return graph, static_in, static_out


def _no_stage(name: str) -> AbstractContextManager:
    return nullcontext()


def to_host(t: torch.Tensor) -> np.ndarray:
    """``t`` as a numpy array. From CUDA it lands in pinned memory in one DMA (a pageable
    copy hit page faults: 10 ms for 64 maps); the array keeps that block until it is freed."""
    if t.device.type != "cuda":
        return t.numpy()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host.numpy()


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
        precision: str = "fp32",
        cuda_graphs: bool = True,
    ) -> None:
        """``runtime``: ``"torch"`` runs the feature path in torch; ``"onnxruntime"`` exports it
        to ONNX (in memory) and runs it in an onnxruntime session (branches and AMC stay torch).
        ``precision`` and ``cuda_graphs``: see ``configure_execution``."""
        self.runtime = check_runtime(runtime)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # TF32 moves scores by ~3e-3 relative: evaluate (CPU) and serve (CUDA) must agree to 1e-4.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.config = config
        self._fp32_features = self._feature_runner(frozen(features), config.image_size)
        self.branches = branches
        for _, module in branches.named():
            module.to(self.device)
        self.combiner = AnomalyMapCombiner(config.image_size, config.postprocess.sigma).to(self.device)
        self.thresholds = thresholds
        self.mean, self.std = list(mean), list(std)
        self.manifest = manifest or {}
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
                    stage: Callable[[str], AbstractContextManager] = _no_stage) -> torch.Tensor:
        """Model input ``[B, 3, S, S]`` on the device -> final maps ``[B, S, S]``; no host sync but ``stage``'s."""
        with stage("features"):
            nns_feats, gauss_feats = (f.float() for f in self.features(x))
        inputs = {"nns": nns_feats, "gaussian": gauss_feats}
        branch_maps = []
        for name, module in self.branches.named():
            with stage(name):
                branch_maps.append(module(inputs[name]))
        with stage("amc"):
            return self.combiner(branch_maps)

    def _preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB ``uint8`` images -> model input ``[B, 3, S, S]``; resized on the device when it is CUDA."""
        size = self.config.image_size
        if self._cuda_torch:
            return preprocess_on_device(images, size, self.mean, self.std, self.device)
        return preprocess(images, size, self.mean, self.std)

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
            x = self._preprocess(images)
        final = self.maps(x, timer)
        with timer.stage("postprocess"):
            maps = to_host(final)
            scores = maps.reshape(len(maps), -1).max(axis=1).astype(np.float64)  # = image_scores, one copy
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
