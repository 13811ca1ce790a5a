"""NNS branch: distance of every test patch to its nearest memory-bank vector.

Distances are computed by chunked matmul (``|x|^2 - 2 x.b^T + |b|^2``), so memory stays
bounded by ``chunk x bank`` however many patches come in, and the graph exports to ONNX.
"""

from __future__ import annotations

import torch
from torch import nn


def flatten_patches(features: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B*h*w, C]`` (patch-major)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def nearest(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor,
            chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance ``[N]`` of each of ``queries [N, C]`` to its nearest row of ``bank [M, C]``,
    and that row's index ``[N]``."""
    out = torch.empty(queries.shape[0], device=queries.device, dtype=queries.dtype)
    index = torch.empty(queries.shape[0], device=queries.device, dtype=torch.long)
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk]
        d2, i = torch.addmm(bank_sq.unsqueeze(0), q, bank.T, alpha=-2.0).min(dim=1)
        out[start : start + chunk] = (d2 + (q * q).sum(1)).clamp_min_(0.0).sqrt_()
        index[start : start + chunk] = i
    return out, index


class MemoryBank(nn.Module):
    """Coreset memory bank ``[M, C]``; ``forward`` maps features ``[B, C, h, w]`` to ``[B, h, w]``."""

    def __init__(self, bank: torch.Tensor, chunk: int = 8192) -> None:
        super().__init__()
        self.register_buffer("bank", bank.float().contiguous())
        self.register_buffer("bank_sq", (self.bank * self.bank).sum(1), persistent=False)
        self.chunk = chunk

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        return nearest(flatten_patches(features), self.bank, self.bank_sq, self.chunk)[0].view(b, h, w)

    def search(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[B, C, h, w]`` -> distance to the nearest bank vector ``[B, h, w]`` and that
        vector ``[B, C, h, w]`` (the defect head's normal residual)."""
        b, c, h, w = features.shape
        d, index = nearest(flatten_patches(features), self.bank, self.bank_sq, self.chunk)
        return d.view(b, h, w), self.bank[index].view(b, h, w, c).permute(0, 3, 1, 2)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank}
