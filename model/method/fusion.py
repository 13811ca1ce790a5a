"""LGFFP (local-global feature fusion): the Gaussian branch's feature builder.

``concat(layer1, layer2) + proj(layer3)`` on one grid, each grid cell a token, then
transformer blocks (global context), then the tokens back on the grid. The blocks come
from one of two places (``FusionConfig.source``):

* ``cait``  : the first ``cait_blocks`` blocks of a pretrained timm CaiT (the paper), with
  its position embedding resampled to the grid. Weights from a local file or the timm hub
  (``random``: none, for speed benchmarks).
* ``train`` : a few CaiT-style blocks trained at fit time on the PSG task (offline default,
  since no package ships CaiT weights).

The fused tokens either replace the local features (``FusionConfig.mode = "tokens"``, the
paper's) or, in ``residual`` mode, only what the blocks add to each token is upsampled onto
the finest concatenated grid and added to the untouched local features there, so a coarse
token grid brings global context without costing stride-4 detail.

When fusion is off the Gaussian branch uses plain concatenation (``LayerConcat``).
"""

from __future__ import annotations

import logging

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from model.method.backbone import WeightsError, read_state_dict, timm_hub_state_dict
from model.method.config import FitConfig

log = logging.getLogger(__name__)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a feature map ``[B, C, h, w]`` to ``size``: average-pool down, bilinear up."""
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if h > size[0]:
        if h % size[0] == 0 and w % size[1] == 0:  # fixed kernel: exports to ONNX
            factor = (int(h // size[0]), int(w // size[1]))
            return F.avg_pool2d(x, factor, factor)
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def neighbourhood_pool(pool_size: int) -> nn.Module:
    """``pool_size`` x ``pool_size`` average pooling at stride 1 (same grid; identity for 1)."""
    if pool_size <= 1:
        return nn.Identity()
    return nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)


def concat_width(channels: list[int], layers: tuple[int, ...]) -> int:
    """Channels of the concatenation of ``layers`` (1-based) of a backbone with ``channels``."""
    return sum(channels[i - 1] for i in layers)


class LayerConcat(nn.Module):
    """Selected backbone layers on the finest selected layer's grid, concatenated, then
    ``pool_size`` average pooling (local neighbourhood aggregation). No parameters.

    This is each branch's feature builder, and the LGFFP fallback when no fusion
    transformer is used. ``layers`` are 1-based positions in the backbone's outputs.
    """

    def __init__(self, layers: tuple[int, ...], pool_size: int = 3) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.pool = neighbourhood_pool(pool_size)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """``feats[k] [B, Ck, Hk, Wk]`` -> ``[B, sum Ck (selected), H, W]`` on the finest selected grid."""
        chosen = [feats[i - 1] for i in self.layers]
        size = max((tuple(f.shape[-2:]) for f in chosen), key=lambda hw: hw[0])
        return self.pool(torch.cat([resize_to(f, size) for f in chosen], dim=1))


def resample_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Square position embedding ``[1, g*g, D]`` -> ``[1, h*w, D]`` by bicubic resampling."""
    n, d = pos.shape[1:]
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"position embedding of {n} tokens is not a square grid")
    if (g, g) == tuple(grid):
        return pos.clone()
    img = pos.reshape(1, g, g, d).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=grid, mode="bicubic", align_corners=False)
    return img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d)


class TokenFusion(nn.Module):
    """Backbone layers -> fused map ``[B, D, h, w]`` on the grid of ``grid_layer``.

    ``concat`` layers are concatenated (width ``C``); ``project`` is mapped to ``C`` by a
    1x1 conv and added; tokens are embedded to ``D`` (identity when ``C == D``), get the
    position embedding, pass through ``blocks`` and are average-pooled by ``pool_size``.
    ``residual``: the output is instead the concatenation on the finest ``concat`` grid plus
    the blocks' update of the tokens (needs ``C == D``), upsampled -> ``[B, C, H, W]``.
    """

    def __init__(
        self,
        concat: tuple[int, ...],
        project: int,
        grid_layer: int,
        channels: list[int],
        grid: tuple[int, int],
        blocks: nn.ModuleList,
        pos_embed: torch.Tensor,
        pool_size: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.concat, self.project, self.grid_layer = tuple(concat), project, grid_layer
        width = concat_width(channels, concat)
        dim = pos_embed.shape[-1]
        if residual and width != dim:
            raise ValueError(f"residual fusion needs token width {dim} equal to the concatenation's {width}")
        self.residual = residual
        self.proj = nn.Conv2d(channels[project - 1], width, 1)
        self.embed = nn.Identity() if width == dim else nn.Linear(width, dim)
        self.pos_embed = nn.Parameter(pos_embed)
        self.blocks = blocks
        self.pool = neighbourhood_pool(pool_size)
        self.out_channels = dim
        self.grid = tuple(grid)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """``feats[k] [B, Ck, Hk, Wk]`` -> ``[B, D, h, w]``."""
        grid = tuple(feats[self.grid_layer - 1].shape[-2:])
        fine = tuple(feats[min(self.concat) - 1].shape[-2:]) if self.residual else grid
        local = torch.cat([resize_to(feats[i - 1], fine) for i in self.concat], dim=1)
        x = resize_to(local, grid) + resize_to(self.proj(feats[self.project - 1]), grid)
        start = self.embed(x.flatten(2).transpose(1, 2)) + self.pos_embed
        tokens = start
        for block in self.blocks:
            tokens = block(tokens)
        if self.residual:
            tokens = tokens - start
        b, _, d = tokens.shape
        out = tokens.transpose(1, 2).reshape(b, d, *grid)
        if self.residual:
            out = local + resize_to(out, fine)
        return self.pool(out)


def _cait_parts(config: FitConfig, pretrained: bool) -> tuple[nn.ModuleList, torch.Tensor]:
    """The first ``cait_blocks`` blocks of ``cait_arch`` and its position embedding."""
    f = config.fusion
    cait = timm.create_model(f.cait_arch, pretrained=False)
    if pretrained and f.cait_weights != "random":
        state = timm_hub_state_dict(f.cait_arch) if f.cait_weights == "timm" else read_state_dict(f.cait_weights)
        try:
            cait.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{f.cait_weights} does not hold {f.cait_arch} weights: {exc}") from exc
    if f.cait_blocks > len(cait.blocks):
        raise ValueError(f"{f.cait_arch} has {len(cait.blocks)} blocks, fewer than cait_blocks={f.cait_blocks}")
    return nn.ModuleList(cait.blocks[: f.cait_blocks]), cait.pos_embed.detach()


def _trained_parts(config: FitConfig, dim: int, grid: tuple[int, int]) -> tuple[nn.ModuleList, torch.Tensor]:
    """Fresh pre-norm ViT blocks with LayerScale (as CaiT's, but with memory-efficient attention),
    of width ``dim``, to be trained at fit time, and a zero position embedding."""
    f = config.fusion
    blocks = nn.ModuleList(
        Block(dim, f.heads, mlp_ratio=f.mlp_ratio, qkv_bias=True, init_values=f.init_values) for _ in range(f.depth)
    )
    return blocks, torch.zeros(1, grid[0] * grid[1], dim)


def build_fusion(config: FitConfig, backbone: nn.Module, pretrained: bool = True) -> nn.Module:
    """The Gaussian branch's feature builder for ``config`` on ``backbone``'s outputs.

    ``pretrained=False`` builds the structure only (the artifact then supplies its weights).
    """
    g, f = config.gaussian, config.fusion
    if not f.enabled:
        return LayerConcat(g.layers, g.pool_size)
    channels = backbone.feature_info.channels()
    reductions = backbone.feature_info.reduction()
    grid_layer = f.grid_layer or min(g.layers)
    side = config.image_size // reductions[grid_layer - 1]
    grid = (side, side)
    torch.manual_seed(config.seed)
    if f.source == "cait":
        blocks, pos = _cait_parts(config, pretrained)
        pos = resample_pos_embed(pos, grid)
    elif f.source == "train":
        blocks, pos = _trained_parts(config, concat_width(channels, g.layers), grid)
    else:
        raise ValueError(f"unknown fusion source {f.source!r}: use 'train' or 'cait'")
    if f.mode not in ("tokens", "residual"):
        raise ValueError(f"unknown fusion mode {f.mode!r}: use 'tokens' or 'residual'")
    residual = f.mode == "residual"
    fusion = TokenFusion(g.layers, f.project_layer, grid_layer, channels, grid, blocks, pos, g.pool_size, residual)
    log.info("LGFFP fusion: %s, %d blocks of width %d on a %dx%d grid", f.source, len(blocks), pos.shape[-1], *grid)
    return fusion


def fusion_channels(fusion: nn.Module, backbone: nn.Module, config: FitConfig) -> int:
    """Channels the fusion hands to the Gaussian branch (before dim selection)."""
    if isinstance(fusion, TokenFusion):
        return fusion.out_channels
    return concat_width(backbone.feature_info.channels(), config.gaussian.layers)
