"""The drift a line is expected to have between sessions, taught to the Gaussian branch.

A per-position Gaussian learns the spread of the training images, which come from one session:
where they never vary (a saturated white background, a fixture), its variance is close to zero,
and a lamp 5 % dimmer a week later makes every position of every good part an outlier (on
bottle the product's scores rose 18x and every good part was flagged; NNS's rose 1.13x). The
fit cannot see the next session, so it is told what to expect (``gaussian.drift_*``): exposure
(a gain of 1 ± ``drift_exposure``), tone (a gamma of 1 ± ``drift_gamma``) and position (a shift
of ``drift_position`` of the side in a random direction). It measures how the Gaussian features
of ``drift_images`` training images change, each under one such change (the kinds in turn, a
random sign or direction), and adds each kind's mean outer product of those changes, per
position, to the covariance: the change it measured becomes about one standard deviation of
normal variation. It costs one extra pass of the backbone per image (16 by default).
Where the part itself varies, the added term is small against the spread it learned.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from model.method.config import FitConfig
from model.method.features import FeaturePath
from model.runtime.imageio import preprocess


def drifted(image: np.ndarray, kind: str, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` (RGB ``uint8 [S, S, 3]``) under one drift ``kind`` of ``magnitude``, its sign or
    direction drawn from ``rng``: ``exposure`` (gain), ``gamma`` (tone curve), ``position`` (shift,
    border replicated)."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if kind == "exposure":
        table = np.arange(256) * (1.0 + sign * magnitude)
    elif kind == "gamma":
        table = 255.0 * (np.arange(256) / 255.0) ** (1.0 + sign * magnitude)
    else:
        h, w = image.shape[:2]
        angle = rng.uniform(0.0, 2.0 * np.pi)
        shift = np.float64([[1, 0, magnitude * w * np.cos(angle)], [0, 1, magnitude * h * np.sin(angle)]])
        return cv2.warpAffine(image, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.LUT(image, np.clip(np.rint(table), 0, 255).astype(np.uint8))


def kinds(config: FitConfig) -> dict[str, float]:
    """The drift kinds the config asks for, with their magnitudes (a magnitude of 0 is off)."""
    g = config.gaussian
    wanted = {"exposure": g.drift_exposure, "gamma": g.drift_gamma, "position": g.drift_position}
    return {k: float(m) for k, m in wanted.items() if m > 0}


@torch.inference_mode()
def drift_covariance(features: FeaturePath, images: Sequence[np.ndarray], config: FitConfig, mean: Sequence[float],
                     std: Sequence[float], device: str | torch.device) -> torch.Tensor | None:
    """``[P, D, D]`` (float64): per drift kind of ``config`` (``kinds``), the per-position mean outer
    product of the Gaussian features' change, summed over the kinds. The images (RGB ``uint8`` at
    the model input size) take the kinds in turn, one change each: one extra pass per image. None
    when no kind is asked for or there are too few images to give each kind one."""
    wanted = list(kinds(config).items())
    if not wanted or len(images) < len(wanted):
        return None
    rng = np.random.default_rng(config.seed + 5)
    sums: list[torch.Tensor | None] = [None] * len(wanted)
    counts = [0] * len(wanted)
    for start in range(0, len(images), config.batch_size):
        chunk = list(images[start : start + config.batch_size])
        which = [(start + i) % len(wanted) for i in range(len(chunk))]
        changed = [drifted(x, *wanted[k], rng) for x, k in zip(chunk, which, strict=True)]
        g = features(preprocess(chunk + changed, config.image_size, mean, std).to(device))[1].double()
        x = g.flatten(2).permute(2, 0, 1)  # [P, 2b, D]
        delta = x[:, len(chunk):] - x[:, : len(chunk)]  # [P, b, D]
        for k in set(which):
            d = delta[:, [i for i, w in enumerate(which) if w == k]]
            outer = d.transpose(1, 2) @ d
            sums[k] = outer if sums[k] is None else sums[k] + outer
            counts[k] += d.shape[1]
    return sum(s / n for s, n in zip(sums, counts, strict=True))
