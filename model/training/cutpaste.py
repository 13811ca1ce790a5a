"""CutPaste and CutPaste-Scar pseudo-defects (Li et al., CVPR 2021) for PSG fine-tuning.

Both cut a patch from a random place of a good image, jitter its colours and paste it at
another random place; Scar cuts a thin rotated strip. Each function returns the new image
and the boolean mask of the pixels it may have changed; nothing outside the mask changes.
Images are RGB ``uint8 [H, W, 3]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Label of each view in the PSG 3-way task.
NORMAL, CUTPASTE, SCAR = 0, 1, 2


@dataclass(frozen=True)
class Jitter:
    """Colour jitter strengths, as torchvision's ColorJitter (factors in ``1 ± s``, hue in turns)."""

    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1


def color_jitter(patch: np.ndarray, rng: np.random.Generator, jitter: Jitter = Jitter()) -> np.ndarray:
    """Random brightness, contrast, saturation and hue change of ``patch [h, w, 3] uint8``."""
    x = patch.astype(np.float32)
    x *= rng.uniform(1 - jitter.brightness, 1 + jitter.brightness)
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - gray.mean()) * rng.uniform(1 - jitter.contrast, 1 + jitter.contrast) + gray.mean()
    gray = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    x = (x - gray) * rng.uniform(1 - jitter.saturation, 1 + jitter.saturation) + gray
    x = np.clip(x, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)  # OpenCV hue is in [0, 180)
    shift = int(round(rng.uniform(-jitter.hue, jitter.hue) * 180))
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _paste(
    image: np.ndarray,
    patch: np.ndarray,
    valid: np.ndarray,
    rng: np.random.Generator,
    centres: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``patch [h, w, 3]`` where ``valid [h, w]`` at a random place; -> (image, mask [H, W]).

    The place is uniform over the image by default. With ``centres`` (bool ``[H, W]``, at
    least one True) the patch is centred on one of its True pixels drawn at random, shifted
    only as far as needed to stay inside the image. ``centres=None`` draws exactly what it
    always drew, so PSG's random stream does not change.
    """
    H, W = image.shape[:2]
    h, w = valid.shape
    if centres is None:
        top, left = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
    else:
        if centres.shape != (H, W):
            raise ValueError(f"centres must be [{H}, {W}], got {list(centres.shape)}")
        allowed = np.flatnonzero(centres)
        if allowed.size == 0:
            raise ValueError("centres has no True pixel")
        cy, cx = divmod(int(allowed[rng.integers(allowed.size)]), W)
        top, left = int(np.clip(cy - h // 2, 0, H - h)), int(np.clip(cx - w // 2, 0, W - w))
    out = image.copy()
    mask = np.zeros((H, W), bool)
    mask[top : top + h, left : left + w] = valid
    region = out[top : top + h, left : left + w]
    region[valid] = patch[valid]
    return out, mask


def _cut(image: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``[h, w, 3]`` crop of ``image``."""
    H, W = image.shape[:2]
    top, left = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
    return image[top : top + h, left : left + w]


def cutpaste(
    image: np.ndarray,
    rng: np.random.Generator,
    area_ratio: tuple[float, float] = (0.02, 0.15),
    aspect_ratio: float = 0.3,
    jitter: Jitter = Jitter(),
    centres: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle of ``area_ratio`` of the image, aspect ratio log-uniform in
    ``[aspect_ratio, 1 / aspect_ratio]``, jittered and pasted elsewhere. -> (image, mask).

    ``centres`` (bool ``[H, W]``, optional) restricts where the patch is centred (see
    ``_paste``); the crop it is cut from stays uniform over the image."""
    H, W = image.shape[:2]
    area = rng.uniform(*area_ratio) * H * W
    aspect = np.exp(rng.uniform(np.log(aspect_ratio), -np.log(aspect_ratio)))
    h = int(np.clip(round(np.sqrt(area * aspect)), 1, H))
    w = int(np.clip(round(np.sqrt(area / aspect)), 1, W))
    patch = color_jitter(_cut(image, h, w, rng), rng, jitter)
    return _paste(image, patch, np.ones((h, w), bool), rng, centres)


def _rotate(patch: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``patch`` rotated on an enlarged canvas, and the mask of its pixels there."""
    h, w = patch.shape[:2]
    side = int(np.ceil(np.hypot(h, w))) + 2
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    m[:, 2] += ((side - w) / 2, (side - h) / 2)
    rotated = cv2.warpAffine(patch, m, (side, side), flags=cv2.INTER_LINEAR)
    valid = cv2.warpAffine(np.full((h, w), 255, np.uint8), m, (side, side), flags=cv2.INTER_NEAREST) > 0
    return rotated, valid


def cutpaste_scar(
    image: np.ndarray,
    rng: np.random.Generator,
    width: tuple[int, int] = (2, 16),
    height: tuple[int, int] = (10, 25),
    rotation: float = 45.0,
    jitter: Jitter = Jitter(),
    centres: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A thin strip (``width`` x ``height`` px at 256 px; scaled with the image), rotated by up to
    ``±rotation`` degrees, jittered and pasted elsewhere. -> (image, mask).

    ``centres`` (bool ``[H, W]``, optional) restricts where the strip is centred (see ``_paste``)."""
    H, W = image.shape[:2]
    scale = min(H, W) / 256
    w = max(1, round(rng.integers(width[0], width[1] + 1) * scale))
    h = max(1, round(rng.integers(height[0], height[1] + 1) * scale))
    patch = color_jitter(_cut(image, min(h, H), min(w, W), rng), rng, jitter)
    rotated, valid = _rotate(patch, rng.uniform(-rotation, rotation))
    if rotated.shape[0] > H or rotated.shape[1] > W:  # tiny images: skip the rotation
        rotated, valid = patch, np.ones(patch.shape[:2], bool)
    return _paste(image, rotated, valid, rng, centres)


def pseudo_views(image: np.ndarray, rng: np.random.Generator) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """The three PSG views of one good image, each with its label and changed-pixel mask:
    (normal, 0, empty), (CutPaste, 1, mask), (Scar, 2, mask)."""
    (pasted, pasted_mask), (scar, scar_mask) = cutpaste(image, rng), cutpaste_scar(image, rng)
    return [(image, NORMAL, np.zeros(image.shape[:2], bool)), (pasted, CUTPASTE, pasted_mask), (scar, SCAR, scar_mask)]
