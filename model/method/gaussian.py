"""Gaussian branch: per-position mean and inverse covariance, Mahalanobis distance map.

Fitting streams over batches with running sums, so memory is
``P x D x D`` (P positions, D selected dims) whatever the number of images. The
inverse uses Cholesky (``torch.linalg.inv`` on batched CPU matrices hits oneMKL
errors with this torch build).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GaussianAccumulator:
    """Running first and second moments per position over ``[B, D, h, w]`` batches (float64).

    With a shift tolerance r, every position also takes the samples of its neighbours up
    to r cells away (edges replicated), so the model accepts parts that move by that
    much. Summing shifted copies of the data equals box-filtering the moment fields, so
    this is done once in ``finalize`` and costs nothing per image.
    """

    def __init__(self, shift_tolerance: int = 0) -> None:
        self.shift_tolerance = shift_tolerance
        self.n = 0
        self.grid: tuple[int, int] | None = None
        self.sum: torch.Tensor | None = None  # [P, D]
        self.outer: torch.Tensor | None = None  # [P, D, D]

    def update(self, features: torch.Tensor) -> None:
        x = features.detach().double().flatten(2).permute(2, 0, 1).contiguous()  # [P, B, D]
        if self.sum is None:
            p, _, d = x.shape
            self.grid = tuple(features.shape[-2:])
            self.sum = torch.zeros(p, d, dtype=torch.float64, device=x.device)
            self.outer = torch.zeros(p, d, d, dtype=torch.float64, device=x.device)
        self.sum += x.sum(1)
        self.outer += x.transpose(1, 2) @ x
        self.n += x.shape[1]

    def merge(self, other: GaussianAccumulator) -> None:
        """Add ``other``'s images (the same grid and dims) to these moments."""
        if other.sum is None:
            return
        if self.sum is None:
            self.sum, self.outer, self.grid = other.sum.clone(), other.outer.clone(), other.grid
        else:
            if other.grid != self.grid or other.sum.shape != self.sum.shape:
                raise ValueError(f"cannot merge moments of grid {other.grid} into {self.grid}")
            self.sum += other.sum
            self.outer += other.outer
        self.n += other.n

    def moments(self) -> dict[str, torch.Tensor]:
        """What a later update needs to go on accumulating (``from_moments``): the count, the mean
        ``[P, D]`` (float64) and the upper triangles of the centred second moments ``[P, T]``
        (float32: centred, so float32 loses nothing that matters), and the grid."""
        if self.n < 1 or self.sum is None or self.outer is None or self.grid is None:
            raise ValueError("no moments accumulated")
        mean = self.sum / self.n
        centred = self.outer - self.n * mean.unsqueeze(2) * mean.unsqueeze(1)
        return {"n": torch.tensor(self.n, dtype=torch.int64), "mean": mean,
                "m2_triu": pack_symmetric(centred).float(), "grid": torch.tensor(self.grid, dtype=torch.int64)}

    @classmethod
    def from_moments(cls, tensors: dict[str, torch.Tensor], shift_tolerance: int = 0) -> GaussianAccumulator:
        """An accumulator holding the moments ``moments`` wrote, ready for more ``update`` calls."""
        acc = cls(shift_tolerance)
        acc.n = int(tensors["n"])
        acc.grid = tuple(int(v) for v in tensors["grid"])
        mean = tensors["mean"].double()
        acc.sum = mean * acc.n
        acc.outer = unpack_symmetric(tensors["m2_triu"].double()) + acc.n * mean.unsqueeze(2) * mean.unsqueeze(1)
        return acc

    def finalize(self, reg: float, shift_tolerance: int | None = None,
                 drift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[P, D]`` and inverse of (unbiased covariance + ``drift`` + ``reg`` I) ``[P, D, D]``, float32.

        ``shift_tolerance`` overrides the accumulator's own: one pass over the images serves
        every tolerance. ``drift [P, D, D]``: the covariance of the features' change under the
        drift a line is expected to have between sessions (``model.training.drift``), averaged
        over the neighbourhood like the moments.
        """
        if self.n < 2 or self.sum is None or self.outer is None or self.grid is None:
            raise ValueError("the Gaussian needs at least 2 training images")
        r = self.shift_tolerance if shift_tolerance is None else shift_tolerance
        total, outer, n = self.sum, self.outer, self.n
        if r > 0:
            total = neighbourhood_sum(total, self.grid, r)
            outer = neighbourhood_sum(outer.flatten(1), self.grid, r).view_as(outer)
            n *= (2 * r + 1) ** 2
            if drift is not None:
                drift = neighbourhood_sum(drift.flatten(1), self.grid, r).view_as(drift) / (2 * r + 1) ** 2
        mean = total / n
        cov = (outer - n * mean.unsqueeze(2) * mean.unsqueeze(1)) / (n - 1)
        if drift is not None:
            cov = cov + drift.to(cov)
        cov += reg * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        chol = torch.linalg.cholesky(cov)
        inv = torch.cholesky_inverse(chol)
        return mean.float(), inv.float()


def neighbourhood_sum(field: torch.Tensor, grid: tuple[int, int], r: int) -> torch.Tensor:
    """Sum of ``field [P, K]`` (P = h*w positions) over each position's (2r+1)^2 neighbours, edges replicated.

    A box filter by running sums along each grid axis, in ``field``'s own layout (no transposes
    of the ``P x D*D`` moment field).
    """
    h, w = grid
    x = field.reshape(h, w, -1)
    x = torch.cat([x[:1].expand(r, -1, -1), x, x[-1:].expand(r, -1, -1)], 0)
    x = torch.cat([x[:, :1].expand(-1, r, -1), x, x[:, -1:].expand(-1, r, -1)], 1)
    n = 2 * r + 1
    c = F.pad(x.cumsum(0), (0, 0, 0, 0, 1, 0))
    x = c[n:] - c[:-n]
    c = F.pad(x.cumsum(1), (0, 0, 1, 0))
    return (c[:, n:] - c[:, :-n]).reshape(h * w, -1)


def neighbourhood_shifts(x: torch.Tensor, r: int):
    """The ``(2r+1)^2`` copies of ``x [B, D, h, w]`` shifted by up to ``r`` cells (edges replicated).

    The explicit form of what ``neighbourhood_sum`` computes; used by tests.
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            yield padded[:, :, dy : dy + h, dx : dx + w]


class GaussianModel(nn.Module):
    """Mahalanobis distance map: features ``[B, D, h, w]`` -> ``[B, h, w]``."""

    def __init__(self, mean: torch.Tensor, inv_cov: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().contiguous())  # [P, D]
        self.register_buffer("inv_cov", inv_cov.float().contiguous())  # [P, D, D]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, d, h, w = features.shape
        delta = features.flatten(2).permute(2, 0, 1).contiguous() - self.mean.unsqueeze(1)  # [P, B, D]
        m2 = ((delta @ self.inv_cov) * delta).sum(-1)  # [P, B]
        return m2.clamp_min(0.0).sqrt().T.reshape(b, h, w)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Mean and the upper triangle of each (symmetric) inverse covariance: half the bytes, exact."""
        return {"mean": self.mean, "inv_cov_triu": pack_symmetric(self.inv_cov)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> GaussianModel:
        return cls(tensors["mean"], unpack_symmetric(tensors["inv_cov_triu"]))


def pack_symmetric(m: torch.Tensor) -> torch.Tensor:
    """``[P, D, D]`` symmetric -> upper triangles ``[P, D*(D+1)/2]``."""
    d = m.shape[-1]
    i, j = torch.triu_indices(d, d)
    return m[:, i, j].contiguous()


def unpack_symmetric(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_symmetric``: ``[P, D*(D+1)/2]`` -> ``[P, D, D]``."""
    p, n = packed.shape
    d = int(round(((8 * n + 1) ** 0.5 - 1) / 2))
    if d * (d + 1) // 2 != n:
        raise ValueError(f"{n} is not a triangular number")
    i, j = torch.triu_indices(d, d)
    out = packed.new_zeros(p, d, d)
    out[:, i, j] = packed
    out[:, j, i] = packed
    return out
