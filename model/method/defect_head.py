"""The defect head: a few labelled defects in the score itself (DMAD's dual memory bank, PRN's
residuals), as an optional stage that ``fit --defects`` turns on.

An **abnormal bank** holds the NNS-layer features of the labelled defects inside their masks
(cells at least ``head.inside`` covered, so border cells do not bring normal texture in; a
coreset of them beyond ``head.bank_size``). For
every test cell the head compares the patch with both banks: the log distances to the nearest
normal and the nearest abnormal vector, their difference, the log Mahalanobis distance (the
Gaussian map pooled to the NNS grid), the residuals to both nearest vectors (as directions) and
the feature itself. The normalised inputs are projected on a fixed basis (the fit's principal
directions, with defect and normal cells weighted equally) and small convolutional networks
over the projection (3x3 convolutions dilated 1, 2 and 4 for context), averaged, give a defect
probability ``p`` per cell.

The boost is the part of ``p`` above the head's **level** (``offset``), rescaled to [0, 1]. The
fit validates two levels (``head.levels``): the level on good parts (how high ``p`` reaches on
goods the head never trained on), so that on all but about 1 % of good parts the head is silent
and a defect type no shot shows can lose only through those few goods it lifts; or 0, the whole
probability, which lets a head that is also confident on defects below that level boost them.
The final map is the unsupervised map boosted by it, ``final = product x (1 + weight x boost)``
(``model.method.amc``); the fit validates ``weight`` and level on labelled defects the head did
not train on, with the synthetic defects of families it did not train on as a floor (and the
image AUROC they would keep were the head blind to them), and 0 (no boost) is always a
candidate, so the unsupervised map stays the floor unless the head beats it
(``model.training.head_fit``).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def network(in_channels: int, hidden: int, members: int) -> nn.Sequential:
    """Projected inputs ``[B, P, h, w]`` -> logits ``[B, members, h, w]``: ``members`` independent
    networks (grouped convolutions after the first layer) of ``hidden`` channels, receptive field
    17 cells. Their probabilities are averaged: one network's spurious responses on good texture
    vary with its initialisation, so an ensemble at the same cost as one wider network is steadier.
    (A learned 1x1 reduction first lost 0.02 image AUROC on magnetic tile: docs/lab/issue-17-defect-head.md.)"""
    width = hidden * members
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=2, dilation=2, groups=members), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=4, dilation=4, groups=members), nn.ReLU(),
        nn.Conv2d(width, members, 3, padding=1, groups=members),
    )


def nearest_abnormal(queries: torch.Tensor, abnormal: torch.Tensor,
                     exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance ``[N]`` and residual ``[N, C]`` of ``queries [N, C]`` to their nearest row of
    ``abnormal [A, C]``; rows where ``exclude [N, A]`` is true are skipped (a shot's own cells
    during training). With no row left the distance is large and the residual zero."""
    if abnormal.shape[0] == 0:
        return queries.new_full((queries.shape[0],), 1e3), torch.zeros_like(queries)
    # |q - a|^2 less |q|^2, which does not change the nearest row; the exact distance follows
    d2 = torch.addmm(abnormal.square().sum(1), queries, abnormal.T, alpha=-2)
    if exclude is not None:
        d2 = d2.masked_fill(exclude, float("inf"))
    best, index = d2.min(1)
    residual = queries - abnormal[index]
    distance = residual.norm(dim=1)  # exact, not the expansion
    if exclude is not None:
        far = torch.isinf(best)
        residual = residual.masked_fill(far[:, None], 0.0)
        distance = distance.masked_fill(far, 1e3)
    return distance, residual


@dataclass
class Parts:
    """A set of cells ``[N = B*h*w]`` compared with both banks: the head's inputs before they are
    put side by side (``cell_inputs``) or projected directly (``DefectHead.forward``)."""

    scalars: torch.Tensor  # [N, 4]: log d_n, log Mahalanobis, log d_ab, log d_n - log d_ab
    normal_residual: torch.Tensor  # [N, C]
    normal_distance: torch.Tensor  # [N]
    features: torch.Tensor  # [N, C]
    abnormal_residual: torch.Tensor  # [N, C]
    abnormal_distance: torch.Tensor  # [N]
    grid: tuple[int, int, int]  # b, h, w

    def grid_first(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, K]`` -> ``[B, K, h, w]``."""
        b, h, w = self.grid
        return x.view(b, h, w, -1).permute(0, 3, 1, 2)


def compare(features: torch.Tensor, normal_nearest: torch.Tensor, gaussian_map: torch.Tensor | None,
            abnormal: torch.Tensor, exclude: torch.Tensor | None = None) -> Parts:
    """The NNS features ``[B, C, h, w]`` compared with each cell's nearest normal vector
    ``[B, C, h, w]``, the Gaussian map ``[B, H, W]`` (None without the branch: its term is
    constant) and the abnormal bank ``[A, C]``."""
    b, c, h, w = features.shape
    q = flatten_patches(features)
    d_ab, r_ab = nearest_abnormal(q, abnormal, exclude)
    r_n = q - flatten_patches(normal_nearest)
    d_n = r_n.norm(dim=1)  # exact, unlike the bank search's expanded form near 0
    maha = (F.adaptive_avg_pool2d(gaussian_map.unsqueeze(1), (h, w)).reshape(-1) if gaussian_map is not None
            else torch.ones_like(d_n))
    log_n, log_ab = (d_n + FLOOR).log(), (d_ab + FLOOR).log()
    scalars = torch.stack([log_n, (maha + FLOOR).log(), log_ab, log_n - log_ab], 1)
    return Parts(scalars, r_n, d_n, q, r_ab, d_ab, (b, h, w))


def cell_inputs(features: torch.Tensor, normal_nearest: torch.Tensor, gaussian_map: torch.Tensor | None,
                abnormal: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The head's unnormalised inputs ``[B, D, h, w]`` (``compare``'s arguments): the scalars,
    the residual directions to both nearest vectors and the feature."""
    p = compare(features, normal_nearest, gaussian_map, abnormal, exclude)
    x = torch.cat([p.scalars, p.normal_residual / (p.normal_distance[:, None] + FLOOR), p.features,
                   p.abnormal_residual / (p.abnormal_distance[:, None] + FLOOR)], 1)
    return p.grid_first(x)


def principal_basis(x: torch.Tensor, positive: torch.Tensor, components: int) -> torch.Tensor:
    """``[components, D]``: the leading eigenvectors of the second moment of the normalised inputs
    ``x [M, D]``, with the ``positive`` (defect) rows and the others weighted equally, so the
    directions that set the few defect cells apart are kept, not only the normal texture's."""
    parts = [p for p in (x[positive], x[~positive]) if len(p)]
    # in float32 (3e-7 of float64's, 2.5x faster on CPU); the eigenvectors in float64
    moment = sum(part.T @ part / len(part) for part in parts)
    _, vectors = torch.linalg.eigh(moment.double())
    return vectors[:, -components:].flip(1).T.float().contiguous()


class DefectHead(nn.Module):
    """Abnormal bank + input normalisation and projection + network + level on good parts +
    boost weight: the boost ``[B, h, w]`` in [0, 1]."""

    def __init__(self, abnormal: torch.Tensor, in_mean: torch.Tensor, in_std: torch.Tensor, basis: torch.Tensor,
                 hidden: int, members: int = 1, weight: float = 0.0, offset: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("abnormal", abnormal.float().contiguous())
        self.register_buffer("in_mean", in_mean.float().reshape(-1))
        self.register_buffer("in_std", in_std.float().reshape(-1))
        self.register_buffer("basis", basis.float().contiguous())
        self.register_buffer("weight", torch.tensor(float(weight)))
        self.register_buffer("offset", torch.tensor(float(offset)))
        self.net = network(self.basis.shape[0], hidden, members)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised inputs ``[B, D, h, w]`` -> the network's inputs ``[B, P, h, w]``."""
        z = (x - self.in_mean.view(1, -1, 1, 1)) / self.in_std.view(1, -1, 1, 1)
        return torch.einsum("pd,bdhw->bphw", self.basis, z)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised inputs ``[B, D, h, w]`` -> every member's logits ``[B, members, h, w]``."""
        return self.net(self.project(x))

    @staticmethod
    def probability(logits: torch.Tensor) -> torch.Tensor:
        """The members' logits ``[B, members, h, w]`` -> their mean probability ``[B, h, w]``."""
        return torch.sigmoid(logits).mean(1)

    def excess(self, p: torch.Tensor, level: float | None = None) -> torch.Tensor:
        """The probability ``p`` above ``level`` (None: the head's own, ``offset``), rescaled to
        [0, 1]: the boost."""
        level = self.offset if level is None else torch.tensor(float(level))
        return ((p - level) / (1 - level).clamp_min(1e-6)).clamp(0, 1)

    def probability_of(self, features: torch.Tensor, normal_nearest: torch.Tensor,
                       gaussian_map: torch.Tensor | None) -> torch.Tensor:
        """The defect probability ``p [B, h, w]`` (``compare``'s arguments). The projection is
        applied to each part of the inputs before they would be put side by side: the same
        ``project(cell_inputs(...))`` without building the inputs (tests hold them equal)."""
        p = compare(features, normal_nearest, gaussian_map, self.abnormal)
        w = self.basis / self.in_std
        c = p.features.shape[1]
        ws, wn, wq, wa = w.split([N_SCALARS, c, c, c], 1)
        z = (torch.addmm(-(w @ self.in_mean), p.scalars, ws.T) + p.features @ wq.T
             + (p.normal_residual @ wn.T) / (p.normal_distance[:, None] + FLOOR)
             + (p.abnormal_residual @ wa.T) / (p.abnormal_distance[:, None] + FLOOR))
        return self.probability(self.net(p.grid_first(z)))

    def forward(self, features: torch.Tensor, normal_nearest: torch.Tensor,
                gaussian_map: torch.Tensor | None) -> torch.Tensor:
        """The boost ``[B, h, w]`` (``compare``'s arguments), before the weight."""
        return self.excess(self.probability_of(features, normal_nearest, gaussian_map))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"abnormal": self.abnormal, "in_mean": self.in_mean, "in_std": self.in_std, "basis": self.basis,
                "weight": self.weight, "offset": self.offset,
                **{f"net.{k}": v for k, v in self.net.state_dict().items()}}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> DefectHead:
        if "basis" not in tensors:
            raise ValueError("the defect head's tensors have no 'basis': the artifact was fitted by an earlier "
                             "build of the head; fit it again with --defects")
        members = int(tensors["net.6.weight"].shape[0])
        head = cls(tensors["abnormal"], tensors["in_mean"], tensors["in_std"], tensors["basis"],
                   int(tensors["net.0.weight"].shape[0]) // members, members, float(tensors["weight"]),
                   float(tensors.get("offset", 0.0)))  # a head stored before the level: 0, its behaviour then
        head.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        return head
