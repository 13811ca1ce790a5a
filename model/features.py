"""The feature path: backbone -> (NNS features, Gaussian features).

One ``nn.Module`` from the normalised image to both branches' inputs, so the whole
path can be exported to ONNX as one graph. The Gaussian branch's input goes through a
pluggable *fusion* module (LGFFP); the default is plain concatenation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a feature map ``[B, C, h, w]`` to ``size``: average-pool down, bilinear up."""
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if h > size[0]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConcatFusion(nn.Module):
    """LGFFP fallback: concat(layer1, layer2, layer3) on layer2's grid. No parameters."""

    def forward(self, f1: torch.Tensor, f2: torch.Tensor, f3: torch.Tensor) -> torch.Tensor:
        """``f1 [B,C1,2h,2w], f2 [B,C2,h,w], f3 [B,C3,h/2,w/2]`` -> ``[B, C1+C2+C3, h, w]``."""
        size = tuple(f2.shape[-2:])
        return torch.cat([resize_to(f1, size), f2, resize_to(f3, size)], dim=1)


class FeaturePath(nn.Module):
    """Image ``[B, 3, S, S]`` -> ``(nns [B, Cn, S/8, S/8], gauss [B, Dg, S/8, S/8])``.

    * NNS: concat(layer2, upsampled layer3), then ``pool_size`` average pooling.
    * Gaussian: ``fusion(layer1, layer2, layer3)``, then the selected dims.
    """

    def __init__(self, backbone: nn.Module, fusion: nn.Module, gauss_dims: torch.Tensor, pool_size: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        self.fusion = fusion
        self.register_buffer("gauss_dims", gauss_dims.long(), persistent=False)
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f1, f2, f3 = self.backbone(x)
        size = tuple(f2.shape[-2:])
        nns = self.pool(torch.cat([f2, resize_to(f3, size)], dim=1))
        gauss = self.fusion(f1, f2, f3).index_select(1, self.gauss_dims)
        return nns, gauss


def select_dims(total: int, wanted: int, seed: int) -> torch.Tensor:
    """Sorted random subset of ``wanted`` out of ``total`` channel indices (all when ``wanted >= total``)."""
    if wanted >= total:
        return torch.arange(total)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=gen)[:wanted].sort().values
