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


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, chunk: int) -> torch.Tensor:
    """Euclidean distance ``[N]`` of each of ``queries [N, C]`` to its nearest row of ``bank [M, C]``."""
    out = torch.empty(queries.shape[0], device=queries.device, dtype=queries.dtype)
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk]
        d2 = torch.addmm(bank_sq.unsqueeze(0), q, bank.T, alpha=-2.0)
        d2 = d2.min(dim=1).values + (q * q).sum(1)
        out[start : start + chunk] = d2.clamp_min_(0.0).sqrt_()
    return out


class MemoryBank(nn.Module):
    """Coreset memory bank ``[M, C]``; ``forward`` maps features ``[B, C, h, w]`` to ``[B, h, w]``."""

    def __init__(self, bank: torch.Tensor, chunk: int = 8192) -> None:
        super().__init__()
        self.register_buffer("bank", bank.float().contiguous())
        self.register_buffer("bank_sq", (self.bank * self.bank).sum(1), persistent=False)
        self.chunk = chunk

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        d = nearest_distance(flatten_patches(features), self.bank, self.bank_sq, self.chunk)
        return d.view(b, h, w)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank}
