"""Gaussian branch: per-position mean and inverse covariance, Mahalanobis distance map.

Fitting streams over batches with running sums, so memory is
``P x D x D`` (P positions, D selected dims) whatever the number of images. The
inverse uses Cholesky (``torch.linalg.inv`` on batched CPU matrices hits oneMKL
errors with this torch build).
"""

from __future__ import annotations

import torch
from torch import nn


class GaussianAccumulator:
    """Running first and second moments per position over ``[B, D, h, w]`` batches (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        x = features.detach().double().flatten(2).permute(2, 0, 1)  # [P, B, D]
        if self.sum is None:
            p, _, d = x.shape
            self.sum = torch.zeros(p, d, dtype=torch.float64, device=x.device)
            self.outer = torch.zeros(p, d, d, dtype=torch.float64, device=x.device)
        self.sum += x.sum(1)
        self.outer += x.transpose(1, 2) @ x
        self.n += x.shape[1]

    def finalize(self, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[P, D]`` and inverse of (unbiased covariance + ``reg`` I) ``[P, D, D]``, float32."""
        if self.n < 2 or self.sum is None or self.outer is None:
            raise ValueError("the Gaussian needs at least 2 training images")
        mean = self.sum / self.n
        cov = (self.outer - self.n * mean.unsqueeze(2) * mean.unsqueeze(1)) / (self.n - 1)
        cov += reg * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        chol = torch.linalg.cholesky(cov)
        inv = torch.cholesky_inverse(chol)
        return mean.float(), inv.float()


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
