"""The feature path: backbone -> (NNS features, Gaussian features).

One ``nn.Module`` from the normalised image to both branches' inputs, so the whole
path can be exported to ONNX as one graph. The Gaussian branch's input goes through a
pluggable *fusion* module (LGFFP, ``model.method.fusion``); without it, plain concatenation.
"""

from __future__ import annotations

import torch
from torch import nn

from model.method.backbone import build_feature_net
from model.method.config import FitConfig
from model.method.fusion import LayerConcat, build_fusion


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


def assemble(backbone: nn.Module, config: FitConfig, fusion: nn.Module, gauss_dims: torch.Tensor) -> FeaturePath:
    """The feature path for ``config`` around ``backbone``, with ``fusion`` feeding the Gaussian branch."""
    return FeaturePath(backbone, LayerConcat(config.nns.layers, config.nns.pool_size), fusion, gauss_dims)


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
    fusion = build_fusion(config, backbone, pretrained=False)
    if "fusion" in tensors:
        fusion.load_state_dict(tensors["fusion"], strict=True)
    dims = tensors["gaussian"]["dims"] if "gaussian" in tensors else torch.arange(1)
    return assemble(backbone, config, fusion, dims)
