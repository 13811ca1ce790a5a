"""The feature path: backbone -> (NNS features, Gaussian features).

One ``nn.Module`` from the normalised image to both branches' inputs, so the whole
path can be exported to ONNX as one graph. The Gaussian branch's input goes through a
pluggable *fusion* module (LGFFP); the default is plain concatenation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import build_feature_net
from model.config import FitConfig


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a feature map ``[B, C, h, w]`` to ``size``: average-pool down, bilinear up."""
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if h > size[0]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class LayerConcat(nn.Module):
    """Selected backbone layers on the finest selected layer's grid, concatenated, then
    ``pool_size`` average pooling (local neighbourhood aggregation). No parameters.

    This is each branch's feature builder, and the LGFFP fallback when no fusion
    transformer is used. ``layers`` are 1-based positions in the backbone's outputs.
    """

    def __init__(self, layers: tuple[int, ...], pool_size: int = 3) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.pool = (
            nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)
            if pool_size > 1 else nn.Identity()
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """``feats[k] [B, Ck, Hk, Wk]`` -> ``[B, sum Ck (selected), H, W]`` on the finest selected grid."""
        chosen = [feats[i - 1] for i in self.layers]
        size = max((tuple(f.shape[-2:]) for f in chosen), key=lambda hw: hw[0])
        return self.pool(torch.cat([resize_to(f, size) for f in chosen], dim=1))


class FeaturePath(nn.Module):
    """Image ``[B, 3, S, S]`` -> ``(nns [B, Cn, h, w], gauss [B, Dg, h', w'])``.

    * NNS: ``nns_features(layers)`` (concatenated, pooled).
    * Gaussian: ``fusion(layers)`` (LGFFP; by default a ``LayerConcat``), then the selected dims.
    """

    def __init__(self, backbone: nn.Module, nns_features: nn.Module, fusion: nn.Module, gauss_dims: torch.Tensor) -> None:
        super().__init__()
        self.backbone = backbone
        self.nns_features = nns_features
        self.fusion = fusion
        self.register_buffer("gauss_dims", gauss_dims.long(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        return self.nns_features(feats), self.fusion(feats).index_select(1, self.gauss_dims)


def assemble(backbone: nn.Module, config: FitConfig, gauss_dims: torch.Tensor) -> FeaturePath:
    """The feature path for ``config`` around ``backbone`` (fusion: plain concatenation)."""
    nns = LayerConcat(config.nns.layers, config.nns.pool_size)
    fusion = LayerConcat(config.gaussian.layers, config.gaussian.pool_size)
    return FeaturePath(backbone, nns, fusion, gauss_dims)


def gaussian_channels(backbone: nn.Module, config: FitConfig) -> int:
    """Channels entering the Gaussian branch before dim selection."""
    channels = backbone.feature_info.channels()
    return sum(channels[i - 1] for i in config.gaussian.layers)


def select_dims(total: int, wanted: int, seed: int) -> torch.Tensor:
    """Sorted random subset of ``wanted`` out of ``total`` channel indices (all when ``wanted >= total``)."""
    if wanted >= total:
        return torch.arange(total)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=gen)[:wanted].sort().values


def feature_path_from_tensors(config: FitConfig, tensors: dict[str, dict[str, torch.Tensor]]) -> FeaturePath:
    """Rebuild the fitted feature path from an artifact's tensors (no weight source needed)."""
    backbone = build_feature_net(config.backbone.arch, config.backbone.out_indices)
    backbone.load_state_dict(tensors["backbone"], strict=True)
    dims = tensors["gaussian"]["dims"] if "gaussian" in tensors else torch.arange(1)
    return assemble(backbone, config, dims)
