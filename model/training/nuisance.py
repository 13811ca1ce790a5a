"""Benign nuisance changes a production line sees between fit time and run time.

The fit job applies these to held-out GOOD images already resized to the model input size
``S`` (RGB ``uint8 [S, S, 3]``; any ``[H, W, 3]`` works) to check that a scoring candidate
does not flag a good part because the lamp aged, the camera was refocused or the fixture
moved a little. None of them is a defect.

Magnitudes at ``strength=1`` (``MAGNITUDES``), each drawn with a random sign where it has
one and a size uniform in ``[0.3, 1] x`` the maximum, so every draw really changes the image:

==============  =====================================================================
``brightness``  gain ``1 ± 0.15`` on every pixel (exposure, lamp ageing)
``contrast``    ``(x - mean) x (1 ± 0.15) + mean`` around the image's mean grey
``gamma``       ``255 (x / 255) ** g``, ``g`` in ``0.8 .. 1.25`` (log-symmetric)
``noise``       additive Gaussian sensor noise, sigma 1.5..3 grey levels at the model input
                (a camera's noise of 5..10 grey levels at 900 px, averaged by the downscale;
                the same on the three channels of a grey image, so it stays grey)
``blur``        Gaussian blur, sigma 0.8..1.2 px at 256 px (defocus), scaled with the side
``shift``       translation by up to 5 % of the shorter side, in a random direction
``rotation``    rotation about the centre by up to ±10 degrees
``scale``       zoom about the centre by ``1 ± 0.05``
==============  =====================================================================

``strength`` multiplies every magnitude (0 gives the image back unchanged, 2 doubles each).
Geometric changes replicate the border (``cv2.BORDER_REPLICATE``), so no black corners
appear. Every function is pure: it draws only from the ``numpy.random.Generator`` it is
given (same state, same result), never modifies its input and keeps no state.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

NUISANCES = ("brightness", "contrast", "gamma", "noise", "blur", "shift", "rotation", "scale")
MAGNITUDES = {
    "brightness": 0.15,  # relative gain
    "contrast": 0.15,  # relative contrast change
    "gamma": float(np.log(1.25)),  # |log gamma|
    "noise": (1.5, 3.0),  # sigma range, grey levels at the model input
    "blur": (0.8, 1.2),  # sigma range, px at 256 px
    "shift": 0.05,  # fraction of the shorter side
    "rotation": 10.0,  # degrees
    "scale": 0.05,  # relative zoom
}
_MIN_FRACTION = 0.3  # a draw is at least this fraction of its maximum, so it always changes something


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array [H, W, 3], got {getattr(image, 'dtype', type(image))} "
                         f"{list(getattr(image, 'shape', []))}")


def _signed(rng: np.random.Generator, maximum: float) -> float:
    """A random sign times a size uniform in ``[_MIN_FRACTION, 1] x maximum``."""
    return float((1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(_MIN_FRACTION, 1.0) * maximum)


def _lut(image: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Apply a tone curve ``values [256]`` (float, any range) to every channel of ``image``."""
    table = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table)


def _warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Affine warp of ``image [H, W, 3]`` by ``matrix [2, 3]``, bilinear, border replicated."""
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def apply_nuisance(image: np.ndarray, kind: str, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """``image`` (RGB ``uint8 [H, W, 3]``, not modified) under one nuisance ``kind`` of ``NUISANCES``,
    its magnitude drawn from ``rng`` as described in the module docstring and multiplied by
    ``strength >= 0``. Returns a new ``uint8 [H, W, 3]`` array."""
    _check_image(image)
    if kind not in NUISANCES:
        raise ValueError(f"unknown nuisance {kind!r}; expected one of {NUISANCES}")
    if not strength >= 0.0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    h, w = image.shape[:2]
    side = min(h, w)
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    x = np.arange(256, dtype=np.float64)
    if kind == "brightness":
        return _lut(image, x * (1.0 + strength * _signed(rng, MAGNITUDES["brightness"])))
    if kind == "contrast":
        mean = float(image.mean())
        return _lut(image, (x - mean) * (1.0 + strength * _signed(rng, MAGNITUDES["contrast"])) + mean)
    if kind == "gamma":
        g = np.exp(strength * _signed(rng, MAGNITUDES["gamma"]))
        return _lut(image, 255.0 * (x / 255.0) ** g)
    if kind == "noise":
        sigma = strength * rng.uniform(*MAGNITUDES["noise"])
        grey = np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
        noisy = rng.standard_normal((h, w, 1) if grey else (h, w, 3), dtype=np.float32)
        noisy *= np.float32(sigma)
        noisy = noisy + image  # [h, w, 1] broadcasts over a grey image's three channels
        np.rint(noisy, out=noisy)
        return np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
    if kind == "blur":
        sigma = strength * rng.uniform(*MAGNITUDES["blur"]) * side / 256.0
        if sigma <= 0.0:
            return image.copy()
        return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    if kind == "shift":
        r = strength * rng.uniform(_MIN_FRACTION, 1.0) * MAGNITUDES["shift"] * side
        a = rng.uniform(0.0, 2.0 * np.pi)
        return _warp(image, np.float64([[1, 0, r * np.cos(a)], [0, 1, r * np.sin(a)]]))
    if kind == "rotation":
        return _warp(image, cv2.getRotationMatrix2D(centre, strength * _signed(rng, MAGNITUDES["rotation"]), 1.0))
    # scale
    return _warp(image, cv2.getRotationMatrix2D(centre, 0.0, 1.0 + strength * _signed(rng, MAGNITUDES["scale"])))


def nuisance_suite(
    images: Sequence[np.ndarray],
    rng: np.random.Generator,
    strengths: Sequence[float] = (1.0,),
    per_strength: int = 1,
) -> list[tuple[int, np.ndarray, str, float]]:
    """``per_strength`` nuisance versions of each image at each of ``strengths``:
    ``[(source index, changed, kind, strength)]``.

    ``images``: RGB ``uint8 [H, W, 3]`` arrays (good images at the model input size);
    ``changed`` is ``uint8 [H, W, 3]``. The k-th version overall (k = 0, 1, ...) is of kind
    ``NUISANCES[k % 8]``, so every kind is covered as soon as there are 8 versions in all; an
    image's versions run through the strengths in order.
    """
    if per_strength < 0:
        raise ValueError(f"per_strength must be >= 0, got {per_strength}")
    suite: list[tuple[int, np.ndarray, str, float]] = []
    k = 0
    for index, image in enumerate(images):
        for strength in strengths:
            for _ in range(per_strength):
                kind = NUISANCES[k % len(NUISANCES)]
                suite.append((index, apply_nuisance(image, kind, rng, strength), kind, float(strength)))
                k += 1
    return suite
