"""The defect head: a few labelled defects in the score itself (DMAD's dual memory bank, PRN's
residuals), as an optional stage that ``fit --defects`` turns on.

An **abnormal bank** holds the NNS-layer features of the labelled defects inside their masks
(cells at least ``head.inside`` covered, so border cells do not bring normal texture in). For
every test cell the head compares the patch with both banks: the log distances to the nearest
normal and the nearest abnormal vector, their difference, the log Mahalanobis distance (the
Gaussian map pooled to the NNS grid), the residuals to both nearest vectors (as directions) and
the feature itself. A small convolutional network over these per-cell inputs (3x3 convolutions
dilated 1, 2 and 4 for context) gives a defect probability ``p`` per cell.

The final map is the unsupervised map boosted by it, ``final = product x (1 + weight x p)``
(``model.method.amc``); the fit validates ``weight`` on labelled defects the head did not train
on, and 0 (no boost) is always a candidate, so the unsupervised map stays the floor unless the
head beats it (``model.jobs.defect_head``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.method.memory_bank import flatten_patches

# Added to distances before their log and as the residual directions' denominator: far below
# the distances between features (1-10 for the default backbone), far above float noise. A test
# patch equal to a bank vector (an image the fit learned from, inspected again) then gives the
# same inputs on every runtime instead of the log of rounding noise.
FLOOR = 1e-2
N_SCALARS = 4


def input_channels(feature_dim: int) -> int:
    """Per-cell inputs: 4 scalars, the two residual directions and the feature."""
    return N_SCALARS + 3 * feature_dim


def network(in_channels: int, hidden: int) -> nn.Sequential:
    """Per-cell inputs ``[B, D, h, w]`` -> logits ``[B, 1, h, w]``; receptive field 17 cells.
    (A 1x1 reduction first is cheaper but lost 0.02 image AUROC on magnetic tile: BENCHMARKS.md.)"""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=4, dilation=4), nn.ReLU(),
        nn.Conv2d(hidden, 1, 3, padding=1),
    )


def nearest_abnormal(queries: torch.Tensor, abnormal: torch.Tensor,
                     exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance ``[N]`` and residual ``[N, C]`` of ``queries [N, C]`` to their nearest row of
    ``abnormal [A, C]``; rows where ``exclude [N, A]`` is true are skipped (a shot's own cells
    during training). With no row left the distance is large and the residual zero."""
    if abnormal.shape[0] == 0:
        return queries.new_full((queries.shape[0],), 1e3), torch.zeros_like(queries)
    d2 = (queries.square().sum(1, keepdim=True) - 2 * queries @ abnormal.T + abnormal.square().sum(1)).clamp_min(0)
    if exclude is not None:
        d2 = d2.masked_fill(exclude, float("inf"))
    d2, index = d2.min(1)
    far = torch.isinf(d2)
    residual = torch.where(far[:, None], torch.zeros_like(queries), queries - abnormal[index])
    return torch.where(far, torch.full_like(d2, 1e3), residual.norm(dim=1)), residual  # exact, not the expansion


def cell_inputs(features: torch.Tensor, normal_nearest: torch.Tensor, gaussian_map: torch.Tensor | None,
                abnormal: torch.Tensor,
                exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The head's unnormalised inputs ``[B, D, h, w]`` from the NNS features ``[B, C, h, w]``, each
    cell's nearest normal vector ``[B, C, h, w]``, the Gaussian map ``[B, H, W]`` (None without
    the branch: its term is constant) and the abnormal bank ``[A, C]``."""
    b, c, h, w = features.shape
    q = flatten_patches(features)
    d_ab, r_ab = nearest_abnormal(q, abnormal, exclude)
    r_n = q - flatten_patches(normal_nearest)
    d_n = r_n.norm(dim=1)  # exact, unlike the bank search's expanded form near 0
    maha = (F.adaptive_avg_pool2d(gaussian_map.unsqueeze(1), (h, w)).reshape(-1) if gaussian_map is not None
            else torch.ones_like(d_n))
    log_n, log_ab = (d_n + FLOOR).log(), (d_ab + FLOOR).log()
    scalars = torch.stack([log_n, (maha + FLOOR).log(), log_ab, log_n - log_ab], 1)
    x = torch.cat([scalars, r_n / (d_n[:, None] + FLOOR), q, r_ab / (d_ab[:, None] + FLOOR)], 1)
    return x.view(b, h, w, -1).permute(0, 3, 1, 2)


class DefectHead(nn.Module):
    """Abnormal bank + input normalisation + network + boost weight: ``p [B, h, w]`` in [0, 1]."""

    def __init__(self, abnormal: torch.Tensor, in_mean: torch.Tensor, in_std: torch.Tensor, hidden: int,
                 weight: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("abnormal", abnormal.float().contiguous())
        self.register_buffer("in_mean", in_mean.float().reshape(-1))
        self.register_buffer("in_std", in_std.float().reshape(-1))
        self.register_buffer("weight", torch.tensor(float(weight)))
        self.net = network(self.in_mean.numel(), hidden)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.in_mean.view(1, -1, 1, 1)) / self.in_std.view(1, -1, 1, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised inputs ``[B, D, h, w]`` -> logits ``[B, h, w]``."""
        return self.net(self.normalise(x)).squeeze(1)

    def forward(self, features: torch.Tensor, normal_nearest: torch.Tensor,
                gaussian_map: torch.Tensor | None) -> torch.Tensor:
        x = cell_inputs(features, normal_nearest, gaussian_map, self.abnormal)
        return torch.sigmoid(self.logits(x))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"abnormal": self.abnormal, "in_mean": self.in_mean, "in_std": self.in_std, "weight": self.weight,
                **{f"net.{k}": v for k, v in self.net.state_dict().items()}}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> DefectHead:
        hidden = int(tensors["net.0.weight"].shape[0])
        head = cls(tensors["abnormal"], tensors["in_mean"], tensors["in_std"], hidden, float(tensors["weight"]))
        head.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        return head
