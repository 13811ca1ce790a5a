"""Greedy k-center coreset selection on random projections (PatchCore's subsampling).

Each step costs one mat-vec over the projected patches: with precomputed squared norms,
``|z_i - c|^2 = |z_i|^2 - 2 z_i.c + |c|^2``, so the work is linear in the number of
patches and uses no ``[N, C]`` temporaries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def random_projection(features: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Johnson-Lindenstrauss projection ``[N, C] -> [N, dim]`` (identity when ``dim >= C``)."""
    n, c = features.shape
    if dim >= c:
        return features.float()
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(c, dim, generator=gen) / dim**0.5
    return features.float() @ proj.to(features.device)


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    proj_dim: int = 128,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
    centres: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices ``[n_select]`` of a greedy k-center coreset of ``features [N, C]``.

    The first centre is drawn with ``seed``; each next one is the patch farthest from
    all centres chosen so far (distances in the projected space). With ``centres [M, C]`` (a
    bank chosen earlier, extended by an update) those count as chosen already: the first new
    centre is the patch farthest from them, and the projection is the same for both.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    z = random_projection(features, proj_dim, seed).contiguous()
    norms = (z * z).sum(1)
    min_dist = torch.full((n,), float("inf"), device=z.device)
    if centres is not None and len(centres):
        c = random_projection(centres.to(features), proj_dim, seed)
        for start in range(0, len(c), 4096):
            part = c[start : start + 4096]
            d = torch.addmm(norms.unsqueeze(1), z, part.T, alpha=-2.0) + (part * part).sum(1)
            torch.minimum(min_dist, d.min(1).values, out=min_dist)
        current = int(min_dist.argmax())
    else:
        current = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = torch.empty(n_select, dtype=torch.long)
    dist = torch.empty(n, device=z.device)
    for step in range(n_select):
        chosen[step] = current
        centre = z[current]
        torch.addmv(norms, z, centre, alpha=-2.0, out=dist)
        dist += norms[current]
        torch.minimum(min_dist, dist, out=min_dist)
        current = int(min_dist.argmax())
        if on_step is not None:
            on_step(step)
    return chosen
