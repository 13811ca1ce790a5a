"""AMC (anomaly map compensation): the branch maps -> the final map -> the image score.

``AnomalyMapCombiner`` upsamples each branch map to the model input size, multiplies
them pixel-wise and smooths with a Gaussian (sigma 4 by default, reflect padding; as two
matrix products, ``blur_matrix``); with a defect head
(``model.method.defect_head``) the result is multiplied by ``1 + weight x p``. The image score is
the maximum of the final map, or the mean of its top fraction of pixels (``image_scores``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian ``[K]``, ``K = 2*round(4*sigma)+1``."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur_matrix(size: int, kernel: torch.Tensor) -> torch.Tensor:
    """``[size, size]`` matrix ``M`` with ``m @ M`` the 1-D blur by ``kernel`` along the last
    axis of ``m``, reflect padding folded in (``F.pad(..., mode="reflect")``'s indexing). Two
    products, ``M.T @ m @ M``, blur a map. On CPU that is 10x faster at 256 pixels, batch 32
    (3x to 9x at batch 1, where the convolutions' time varies), than the two 1-D convolutions it
    replaced (one channel and a long kernel are a poor fit for convolution kernels), and 1.7x at
    2048; equal to float rounding (``benchmarks/amc_blur.py``)."""
    r = kernel.numel() // 2
    if r >= size:
        raise ValueError(f"a blur of radius {r} needs maps larger than {size} pixels")
    out = torch.arange(size)
    matrix = torch.zeros(size, size)
    for offset in range(-r, r + 1):
        src = (out + offset).abs()  # reflect at 0 ...
        src = torch.where(src >= size, 2 * (size - 1) - src, src)  # ... and at size - 1
        matrix.index_put_((src, out), kernel[offset + r].expand(size), accumulate=True)
    return matrix


class AnomalyMapCombiner(nn.Module):
    """Branch maps ``[B, h, w]`` (one or more) -> final map ``[B, S, S]``."""

    def __init__(self, image_size: int, sigma: float) -> None:
        super().__init__()
        self.image_size = image_size
        blur = blur_matrix(image_size, gaussian_kernel1d(sigma)) if sigma > 0 else None
        self.register_buffer("blur", blur, persistent=False)
        self._operators: dict[tuple, torch.Tensor] = {}

    def smooth(self, m: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with reflect padding, ``[B, 1, S, S]`` -> same."""
        return m if self.blur is None else self.blur.T @ m @ self.blur

    def forward(self, maps: list[torch.Tensor], boost: torch.Tensor | None = None) -> torch.Tensor:
        """``boost [B, h', w']`` (the defect head's weighted probability): the smoothed product is
        multiplied by ``1 + boost``, upsampled and smoothed the same way."""
        if len(maps) == 1:
            final = self.upsample_smooth(maps[0])
        else:
            final = None
            for m in maps:
                up = self.upsample(m)
                final = up if final is None else final * up
            final = self.smooth(final)
        return self.boosted(final.squeeze(1), boost)

    def boosted(self, final: torch.Tensor, boost: torch.Tensor | None) -> torch.Tensor:
        """The final map without a boost ``[B, S, S]`` multiplied by ``1 + boost``, upsampled and
        smoothed: ``forward``'s last step, for callers that try several boosts on one map."""
        return final if boost is None else final * (1 + self.upsample_smooth(boost).squeeze(1))

    def upsample(self, m: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` -> ``[B, 1, S, S]``, bilinear."""
        return F.interpolate(m.unsqueeze(1), size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)

    def upsample_smooth(self, m: torch.Tensor) -> torch.Tensor:
        """``smooth(upsample(m))`` as ``A_h @ m @ A_w.T``: both are linear and separable, so one
        ``[S, h]`` operator per axis does the two at grid resolution (0.05 ms at batch 1 and 256
        pixels against 0.5 ms)."""
        h, w = m.shape[-2:]
        return (self._operator(h, m) @ m @ self._operator(w, m).T).unsqueeze(1)

    def _operator(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """``[S, n]``: bilinear upsampling of ``n`` samples (``F.interpolate``'s own, applied to
        unit impulses), then the blur. Built at first use per size and device (the warm-up run
        before a CUDA graph is captured builds it)."""
        key = (n, like.device, like.dtype)
        if key not in self._operators:
            eye = torch.eye(n, device=like.device, dtype=like.dtype).unsqueeze(0)
            up = F.interpolate(eye, size=self.image_size, mode="linear", align_corners=False)[0].T
            self._operators[key] = up if self.blur is None else self.blur.T.to(like.dtype) @ up
        return self._operators[key]


def image_scores(final: torch.Tensor, top_fraction: float = 0.0) -> torch.Tensor:
    """Image score ``[B]`` of the final map ``[B, S, S]``: the mean of its ``top_fraction`` highest
    pixels (at least one), which is its maximum for 0."""
    flat = final.flatten(1)
    k = max(1, round(top_fraction * flat.shape[1]))
    return flat.amax(1) if k == 1 else flat.topk(k, dim=1).values.mean(1)
