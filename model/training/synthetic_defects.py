"""Synthetic defects with exact masks, to measure how sensitive a fitted scorer is without labels.

The fit job applies these to held-out GOOD images already resized to the model input size
``S`` (RGB ``uint8 [S, S, 3]``; any ``[H, W, 3]`` works) and checks that each scoring
candidate ranks the defected images above the good ones and localises the change.

Five families (``FAMILIES``):

``cutpaste``
    CutPaste (``model.training.cutpaste.cutpaste``): a colour-jittered rectangle cut from
    anywhere in the image, pasted centred well inside the foreground (it may overhang it).
``scar``
    CutPaste-Scar (``model.training.cutpaste.cutpaste_scar``): a thin rotated strip, its
    width and length chosen here so that its area is the requested one, pasted centred
    well inside the foreground (it may overhang it).
``perlin_texture``
    As DRAEM: an irregular blob (thresholded Perlin noise under a radial fall-off) filled
    with a foreign texture (fractal noise, stripes, or another region of the same image
    flipped and heavily colour-shifted), blended with a random opacity from subtle (0.3)
    to opaque (1.0).
``perlin_patch``
    Subtle defects: the same kind of blob filled with the image's own pixels blurred
    and/or shifted in brightness (a smudge, a stain, a worn or out-of-focus spot).
``matched``
    Defects matched to the part's own contrast and texture, as faint as the real ones that
    tell scorings apart: the same kind of blob, feathered at its edge, whose change is scaled
    to the local spread of the part's grey levels (its standard deviation around the blob):
    a tone change of 1 to 3 local spreads, the local contrast raised or lowered by 40 to 80 %,
    or the part's own texture from elsewhere in the image (the same material, out of place).

Every function is pure: it draws only from the ``numpy.random.Generator`` it is given
(same generator state, same result), never modifies its input and keeps no state. Masks
are exact: pixels outside the mask are byte-identical to the input, and a non-empty mask
always comes with at least one changed pixel inside it. All work is numpy/OpenCV on the
host: at 256 px a defect takes 0.5-3 ms, plus 0.5-2 ms for ``foreground_mask`` when it is
not passed in (``defect_suite`` estimates it once per image).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from model.training.cutpaste import cutpaste, cutpaste_scar

FAMILIES = ("cutpaste", "scar", "perlin_texture", "perlin_patch", "matched")
# Mask area as a fraction of the image: small, medium, large (``defect_suite`` cycles through them).
SIZES = ((0.001, 0.005), (0.005, 0.02), (0.02, 0.10))

_MAX_TRIES = 8  # redraws when a defect happened to change no pixel (e.g. pasted onto its own colour)
_BG_MAX_SPREAD = 12.0  # foreground_mask: a border whose 75th-percentile colour distance exceeds this is no background
_BG_MIN_DIST = 24.0  # foreground_mask: least RGB distance from the background colour that counts as part
_FG_MIN, _FG_MAX = 0.05, 0.90  # foreground_mask: outside these coverages the estimate is not trusted
_FG_HOLE = 0.002  # foreground_mask: enclosed background-coloured spots up to this fraction count as part
_SCAR_ASPECT = (3.0, 10.0)  # scar: length / width, log-uniform
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


# ----------------------------------------------------------------------------- helpers


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array [H, W, 3], got {getattr(image, 'dtype', type(image))} "
                         f"{list(getattr(image, 'shape', []))}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image too small for synthetic defects: {list(image.shape)}")


def _is_grey(image: np.ndarray) -> bool:
    """Whether the three channels of ``image [H, W, 3]`` are equal everywhere (a grey image)."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade ``6t^5 - 15t^4 + 10t^3``, same shape."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], cell: float, rng: np.random.Generator, octaves: int = 1,
                 persistence: float = 0.5) -> np.ndarray:
    """2-D Perlin gradient noise, float32 ``[h, w]``, roughly in ``[-1, 1]`` (std about 0.3 per octave).

    ``cell`` is the lattice spacing of the first octave in px (the feature size); each further
    octave halves it (down to 2 px) and multiplies the amplitude by ``persistence``. The lattice
    phase is random, so the noise is not aligned with the pixel grid.
    """
    h, w = shape
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        c = max(cell / 2**o, 2.0)
        oy, ox = rng.uniform(0.0, c, 2).astype(np.float32)
        ys = (np.arange(h, dtype=np.float32) + oy) / np.float32(c)
        xs = (np.arange(w, dtype=np.float32) + ox) / np.float32(c)
        iy, ix = ys.astype(np.int64), xs.astype(np.int64)
        fy, fx = (ys - iy.astype(np.float32))[:, None], (xs - ix.astype(np.float32))[None, :]
        angle = rng.uniform(0.0, 2.0 * np.pi, (int(iy[-1]) + 2, int(ix[-1]) + 2))
        gx, gy = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
        gx0, gx1, gy0, gy1 = gx[iy], gx[iy + 1], gy[iy], gy[iy + 1]  # lattice rows above / below, [h, gw]
        fx1, fy1 = fx - np.float32(1.0), fy - np.float32(1.0)
        n00 = gx0[:, ix] * fx + gy0[:, ix] * fy
        n01 = gx0[:, ix + 1] * fx1 + gy0[:, ix + 1] * fy
        n10 = gx1[:, ix] * fx + gy1[:, ix] * fy1
        n11 = gx1[:, ix + 1] * fx1 + gy1[:, ix + 1] * fy1
        u, v = _fade(fx), _fade(fy)
        top = n00 + u * (n01 - n00)
        bottom = n10 + u * (n11 - n10)
        out += amp * (top + v * (bottom - top))
        total += amp
        amp *= persistence
    return out * np.float32(np.sqrt(2.0) / total)


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """A cheap estimate of where the part is: bool ``[H, W]``.

    The background colour is the median of a border strip (``min(H, W) / 32`` px wide) of the
    lightly blurred image. When the strip is not uniform (75 % of its pixels within
    ``_BG_MAX_SPREAD`` grey levels of that colour) there is no background to separate: a
    texture, or a part filling the view, and the answer is all True. Otherwise the part is
    every pixel at least ``max(_BG_MIN_DIST, 3 x spread)`` away from the background colour
    (Euclidean RGB distance), opened and closed with a small ellipse, and with its small
    holes filled (enclosed background-coloured spots up to 0.2 % of the image; larger ones,
    such as a bore through which the fixture shows, stay background). When that covers
    more than 90 % or less than 5 % of the image the estimate is not trusted and the answer
    is all True as well.
    """
    _check_image(image)
    H, W = image.shape[:2]
    everything = np.ones((H, W), bool)
    b = max(2, min(H, W) // 32)
    smooth = cv2.GaussianBlur(image, (5, 5), 0).astype(np.float32)
    border = np.concatenate([smooth[:b].reshape(-1, 3), smooth[-b:].reshape(-1, 3),
                             smooth[b:-b, :b].reshape(-1, 3), smooth[b:-b, -b:].reshape(-1, 3)])
    background = np.median(border, axis=0).astype(np.float32)
    spread = float(np.percentile(np.linalg.norm(border - background, axis=1), 75))
    if spread > _BG_MAX_SPREAD:
        return everything
    diff = smooth - background
    dist2 = diff[..., 0] ** 2 + diff[..., 1] ** 2 + diff[..., 2] ** 2  # faster than a reduce over the last axis
    part = (dist2 > np.float32(max(_BG_MIN_DIST, 3.0 * spread) ** 2)).astype(np.uint8)
    k = max(3, (min(H, W) // 64) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    part = cv2.morphologyEx(part, cv2.MORPH_OPEN, kernel)
    part = cv2.morphologyEx(part, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - part, connectivity=4)  # background regions
    is_background = stats[:, cv2.CC_STAT_AREA] > _FG_HOLE * H * W  # large regions: background (bores, gaps)
    outside = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    is_background[outside] = True  # and whatever reaches the border
    is_background[0] = False  # label 0: the part's own pixels
    part_mask = ~is_background[labels]  # small enclosed spots of background colour are part
    cover = part_mask.mean()
    if not _FG_MIN <= cover <= _FG_MAX:
        return everything
    return part_mask


# ----------------------------------------------------------------------------- blobs


def _blob(foreground: np.ndarray, n_target: int, rng: np.random.Generator
          ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """An irregular blob of about ``n_target`` foreground pixels around a random foreground pixel.

    Returns ``(box, mask, weight)``: ``box`` the (rows, cols) slices of the window it lies in,
    ``mask`` bool ``[h, w]`` of that window, ``weight`` float32 ``[h, w]`` in ``[0, 1]``, 1 at the
    blob's core falling to 0 at its edge (0 outside). The field ``amp * perlin - d / R`` (``R``
    the radius of a disc of ``n_target`` px, ``d`` the distance to the centre) is thresholded
    at the level that keeps ``n_target`` foreground pixels; specks under 10 % of the largest
    piece are dropped (at most three pieces are kept) and the level is lowered to make up
    for them, so the area ends within a few percent of ``n_target`` unless the foreground
    near the centre is smaller than that.
    """
    H, W = foreground.shape
    allowed = np.flatnonzero(foreground)
    cy, cx = divmod(int(allowed[rng.integers(allowed.size)]), W)
    radius = max(1.0, np.sqrt(n_target / np.pi))
    half = int(np.ceil(2.5 * radius)) + 2
    box = (slice(max(0, cy - half), min(H, cy + half + 1)), slice(max(0, cx - half), min(W, cx + half + 1)))
    if foreground[box].sum() < 2 * n_target:  # thin or broken foreground near the centre: use the whole image
        box = (slice(0, H), slice(0, W))
    fg = foreground[box]
    h, w = fg.shape
    yy, xx = np.mgrid[box[0], box[1]].astype(np.float32)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / np.float32(radius)
    noise = perlin_noise((h, w), radius * rng.uniform(0.5, 1.5), rng, octaves=2)
    field = np.float32(rng.uniform(1.0, 2.5)) * noise - dist
    values = field[fg]
    n = min(n_target, values.size)
    mask = fg.copy()
    for _ in range(3):
        if n >= values.size:
            mask = fg.copy()
            break
        level = np.partition(values, values.size - n)[values.size - n]
        raw = ((field >= level) & fg).astype(np.uint8)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(raw, connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        order = np.argsort(areas)[::-1][:3]
        keep = order[areas[order] >= max(1, 0.1 * areas[order[0]])] + 1
        mask = np.isin(labels, keep)
        kept = int(mask.sum())
        if kept >= 0.95 * n_target:
            break
        n = min(values.size, n + (n_target - kept))
    inside = field[mask]
    lo, hi = float(inside.min()), float(inside.max())
    weight = np.where(mask, (field - lo) / max(hi - lo, 1e-6), 0.0).astype(np.float32)
    return box, mask, weight


def _random_colour(rng: np.random.Generator, grey: bool) -> np.ndarray:
    """A random colour, float32 ``[3]`` in ``[0, 255]`` (equal channels when ``grey``)."""
    return np.full(3, rng.uniform(0, 255), np.float32) if grey else rng.uniform(0, 255, 3).astype(np.float32)


def _foreign_texture(image: np.ndarray, shape: tuple[int, int], rng: np.random.Generator, grey: bool) -> np.ndarray:
    """A texture foreign to ``image``, float32 ``[h, w, 3]`` in ``[0, 255]``: fractal noise or
    stripes between two random colours, or another region of ``image`` flipped and colour-shifted."""
    h, w = shape
    H, W = image.shape[:2]
    s = min(H, W) / 256.0
    kind = int(rng.integers(3))
    if kind == 0:  # fractal noise between two colours
        t = perlin_noise((h, w), rng.uniform(3.0, 12.0) * s, rng, octaves=3)
        t = np.clip(0.5 + 1.2 * t, 0.0, 1.0)[..., None]
        c0, c1 = _random_colour(rng, grey), _random_colour(rng, grey)
        return c0 + t * (c1 - c0)
    if kind == 1:  # stripes, slightly warped
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0.0, np.pi)
        period = rng.uniform(3.0, 12.0) * s
        u = xx * np.cos(a) + yy * np.sin(a) + 2.0 * period * perlin_noise((h, w), 4.0 * period, rng)
        t = (0.5 + 0.5 * np.sin(2.0 * np.pi * u / period + rng.uniform(0, 2 * np.pi))) ** rng.uniform(0.5, 2.0)
        c0, c1 = _random_colour(rng, grey), _random_colour(rng, grey)
        return c0 + t[..., None] * (c1 - c0)
    # another region of the same image, flipped and heavily colour-shifted
    top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    region = image[top : top + h, left : left + w]
    region = region[::-1] if rng.random() < 0.5 else region[:, ::-1]
    if rng.random() < 0.5:
        region = region[::-1, ::-1]
    region = np.ascontiguousarray(region)
    if not grey:
        hsv = cv2.cvtColor(region, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(rng.integers(30, 150))) % 180).astype(np.uint8)
        hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * rng.uniform(1.5, 3.0) + 30, 0, 255).astype(np.uint8)
        region = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    x = region.astype(np.float32)
    if rng.random() < 0.5:  # invert the tones
        x = 255.0 - x
    gain = rng.uniform(0.5, 1.8)
    return np.clip((x - x.mean()) * gain + x.mean() + rng.uniform(-60, 60), 0, 255)


# ----------------------------------------------------------------------------- families


def _perlin_texture(image: np.ndarray, rng: np.random.Generator, n_target: int, foreground: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray]:
    box, mask, _ = _blob(foreground, n_target, rng)
    window = image[box].astype(np.float32)
    texture = _foreign_texture(image, mask.shape, rng, _is_grey(image))
    opacity = np.float32(rng.uniform(0.3, 1.0))
    blended = (1.0 - opacity) * window + opacity * texture
    return _pasted(image, box, mask, blended)


def _pasted(image: np.ndarray, box, mask: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with ``values`` (float, the window's shape) where ``mask`` is set inside ``box``, and
    the mask at the image's size."""
    out = image.copy()
    out[box][mask] = np.clip(np.rint(values[mask]), 0, 255).astype(np.uint8)
    full = np.zeros(image.shape[:2], bool)
    full[box] = mask
    return out, full


def _perlin_patch(image: np.ndarray, rng: np.random.Generator, n_target: int, foreground: np.ndarray,
                  ) -> tuple[np.ndarray, np.ndarray]:
    box, mask, weight = _blob(foreground, n_target, rng)
    window = image[box].astype(np.float32)
    s = min(image.shape[:2]) / 256.0
    mode = ("blur", "shift", "both")[int(rng.integers(3))]
    changed = window
    if mode != "shift":
        changed = cv2.GaussianBlur(window, (0, 0), rng.uniform(1.5, 4.0) * s, borderType=cv2.BORDER_REFLECT)
    if mode == "blur" and np.abs(changed - window)[mask].mean() < 2.0:
        mode = "both"  # blurring a flat region changes nothing visible: add a stain
    if mode != "blur":
        level = float((window[mask] @ _LUMA).mean())
        sign = -1.0 if level > 200 else 1.0 if level < 55 else (-1.0 if rng.random() < 0.5 else 1.0)
        delta = sign * rng.uniform(8.0, 40.0) * (0.4 + 0.6 * weight)  # strongest at the blob's core
        changed = changed + delta[..., None]
    return _pasted(image, box, mask, changed)


def _matched(image: np.ndarray, rng: np.random.Generator, n_target: int, foreground: np.ndarray,
             ) -> tuple[np.ndarray, np.ndarray]:
    box, mask, weight = _blob(foreground, n_target, rng)
    window = image[box].astype(np.float32)
    luma = window @ _LUMA
    spread = max(float(luma[foreground[box]].std()), 2.0)  # the part's own spread around the blob
    fade = (0.3 + 0.7 * np.sqrt(weight))[..., None]  # feathered: no hard edge gives it away
    mode = int(rng.integers(3))
    if mode == 0:  # a tone change of a few local spreads
        level = float(luma[mask].mean())
        sign = -1.0 if level > 200 else 1.0 if level < 55 else (-1.0 if rng.random() < 0.5 else 1.0)
        changed = window + sign * rng.uniform(1.0, 3.0) * spread * fade
    elif mode == 1:  # local contrast raised or lowered around the local mean
        mean = cv2.GaussianBlur(window, (0, 0), max(2.0, 0.5 * np.sqrt(n_target)), borderType=cv2.BORDER_REFLECT)
        gain = 1.0 + (-1.0 if rng.random() < 0.5 else 1.0) * rng.uniform(0.4, 0.8)
        changed = window + (gain - 1.0) * (window - mean) * fade
    else:  # the part's own texture from elsewhere, blended in
        h, w = mask.shape
        H, W = image.shape[:2]
        top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        other = image[top : top + h, left : left + w].astype(np.float32)
        other = other - other.mean((0, 1)) + window[mask].mean(0)  # same mean tone: only the texture differs
        changed = window + fade * (other - window)
    return _pasted(image, box, mask, changed)


def _inner(foreground: np.ndarray, margin: float) -> np.ndarray:
    """The foreground pixels at least ``margin`` px inside it (bool, same shape), or its deepest
    pixels when none is that deep, so that a patch centred there stays mostly on the part."""
    if foreground.all():
        return foreground
    depth = cv2.distanceTransform(np.pad(foreground, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    return depth >= min(margin, float(depth.max()))


def _cutpaste(image: np.ndarray, rng: np.random.Generator, n_target: int, foreground: np.ndarray,
              ) -> tuple[np.ndarray, np.ndarray]:
    frac = n_target / (image.shape[0] * image.shape[1])
    return cutpaste(image, rng, area_ratio=(frac, frac), centres=_inner(foreground, 0.5 * np.sqrt(n_target)))


def _scar(image: np.ndarray, rng: np.random.Generator, n_target: int, foreground: np.ndarray,
          ) -> tuple[np.ndarray, np.ndarray]:
    H, W = image.shape[:2]
    scale = min(H, W) / 256.0  # cutpaste_scar sizes its strip in px at 256 px
    area = n_target / scale**2
    aspect = _log_uniform(rng, *_SCAR_ASPECT)
    length = min(np.sqrt(area * aspect), 0.75 * 256.0)  # at most 3/4 of the shorter side
    width = max(1, int(round(area / length)))
    length_px = max(1, int(round(area / width)))
    centres = _inner(foreground, 0.35 * length_px * scale)  # a strip of any angle stays mostly on the part
    return cutpaste_scar(image, rng, width=(width, width), height=(length_px, length_px), centres=centres)


_FAMILY_FUNCTIONS = {"cutpaste": _cutpaste, "scar": _scar, "perlin_texture": _perlin_texture,
                     "perlin_patch": _perlin_patch, "matched": _matched}


# ----------------------------------------------------------------------------- public


def synthetic_defect(
    image: np.ndarray,
    rng: np.random.Generator,
    family: str,
    area: tuple[float, float],
    foreground: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic defect of ``family`` on ``image``: ``(defected, mask)``.

    ``image`` RGB ``uint8 [H, W, 3]`` (not modified); ``defected`` the same shape and dtype;
    ``mask`` bool ``[H, W]``: outside it ``defected == image`` exactly, and when it is not
    empty at least one pixel inside it changed. The mask covers a fraction of the image
    drawn log-uniformly from ``area = (lo, hi)`` (``0 < lo <= hi <= 0.5``):

    * ``perlin_texture``, ``perlin_patch``, ``matched``: within a few percent of the drawn fraction, all
      on the foreground (``foreground``, by default ``foreground_mask(image)``), centred on a
      random foreground pixel. Less only when the foreground itself is smaller.
    * ``cutpaste``: a rectangle of the drawn fraction (its sides rounded to whole pixels),
      centred on a random foreground pixel at least half the patch's square-equivalent side
      inside the foreground (its deepest pixels when none is that deep) and shifted only
      to stay inside the image. The crop it is cut from may come from anywhere (background
      too), and the rectangle may overhang the foreground.
    * ``scar``: a strip of the drawn area (within about ±20 % for the smallest sizes: its
      sides are whole pixels and the rotated strip's edge adds or loses a few pixels),
      length/width 3..10 and at most 3/4 of the shorter side, centred like ``cutpaste`` on a
      foreground pixel 0.35 x its length deep; it may overhang the foreground.

    A draw that changes no pixel (a patch pasted onto its own colour) is redrawn, up to 8
    times; after that the image is returned unchanged with an empty mask.
    """
    _check_image(image)
    if family not in _FAMILY_FUNCTIONS:
        raise ValueError(f"unknown defect family {family!r}; expected one of {FAMILIES}")
    lo, hi = float(area[0]), float(area[1])
    if not 0.0 < lo <= hi <= 0.5:
        raise ValueError(f"area must satisfy 0 < lo <= hi <= 0.5, got {area}")
    H, W = image.shape[:2]
    if foreground is None:
        foreground = foreground_mask(image)
    elif foreground.shape != (H, W) or foreground.dtype != bool:
        raise ValueError(f"foreground must be bool [{H}, {W}], got {foreground.dtype} {list(foreground.shape)}")
    if not foreground.any():
        foreground = np.ones((H, W), bool)
    make = _FAMILY_FUNCTIONS[family]
    for _ in range(_MAX_TRIES):
        n_target = max(1, int(round(_log_uniform(rng, lo, hi) * H * W)))
        out, mask = make(image, rng, n_target, foreground)
        if mask.any() and (out[mask] != image[mask]).any():
            return out, mask
    return image.copy(), np.zeros((H, W), bool)


def defect_suite(
    images: Sequence[np.ndarray],
    rng: np.random.Generator,
    per_image: int = 1,
) -> list[tuple[int, np.ndarray, np.ndarray, str]]:
    """``per_image`` synthetic defects of each image: ``[(source index, defected, mask, family)]``.

    ``images``: RGB ``uint8 [H, W, 3]`` arrays (good images at the model input size).
    ``defected`` is ``[H, W, 3] uint8`` and ``mask`` bool ``[H, W]`` as in ``synthetic_defect``.
    The k-th defect overall (k = 0, 1, ...) is of family ``FAMILIES[k % 5]`` and size range
    ``SIZES[k % 3]`` (small 0.1-0.5 %, medium 0.5-2 %, large 2-10 % of the image), so every
    15 consecutive defects hold each (family, size) pair once. The foreground of each image
    is estimated once. A mask is empty only where no draw could change the image (see
    ``synthetic_defect``); skip those.
    """
    if per_image < 0:
        raise ValueError(f"per_image must be >= 0, got {per_image}")
    suite: list[tuple[int, np.ndarray, np.ndarray, str]] = []
    k = 0
    for index, image in enumerate(images):
        _check_image(image)
        foreground = foreground_mask(image) if per_image else None
        for _ in range(per_image):
            family = FAMILIES[k % len(FAMILIES)]
            defected, mask = synthetic_defect(image, rng, family, SIZES[k % len(SIZES)], foreground)
            suite.append((index, defected, mask, family))
            k += 1
    return suite
