"""Synthetic industrial inspection data in MVTec AD layout (the offline demo, cluster demo, tests and benchmarks).

The project cannot ship real images, so the embedded demo and the tests use this small,
fast and fully deterministic generator. ``generate_category`` writes one category::

    <root>/train/good/000.png ...                 defect-free training images
    <root>/test/good/000.png ...                  defect-free test images
    <root>/test/<defect>/000.png ...              defective test images
    <root>/ground_truth/<defect>/000_mask.png     uint8 0/255 mask, one per defective image

with ``<defect>`` one of ``scratch``, ``dent``, ``spot``, ``crack`` (the defective images
are dealt round-robin over the four types). Images are RGB, written as 8-bit PNG by
``cv2.imwrite`` (so BGR on disk, as every PNG reader expects).

Two kinds of category:

``tiles``
    A textured surface: brushed-metal streaks at two scales, a fine periodic weave,
    grain, a gentle illumination gradient and vignette. Each image varies slightly in
    brightness, orientation, weave phase and shift.
``parts``
    A turned flange (disc with a bore and a ring of bolt holes) on a dark fixture, with
    turning marks, anisotropic sheen, lit/shadowed chamfers and a soft cast shadow. Each
    image is jittered by a few pixels and a few degrees.

How a sample is made (``render_sample``): the clean scene is rendered in float from its
own seed; a defect, drawn from a separate seed, is a float *delta* added to the scene;
the delta is zeroed wherever it would change a pixel by less than one grey level and the
mask is exactly the support of what is left (holes filled, which only grows it). Sensor
noise, from a third seed, is then added to both the clean and the defective scene, so
outside the mask the two images are byte-identical. Every seed is derived from
``(seed, split, index)`` with ``numpy.random.SeedSequence``, so any single sample can be
re-rendered without rendering the others.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model.jobs.dataset import list_images

log = logging.getLogger(__name__)

KINDS = ("tiles", "parts")
DEFECT_TYPES = ("scratch", "dent", "spot", "crack")
SPLITS = ("train", "test_good", "test_defect")

_STYLE_KEY = 7919  # separates the per-category style stream from the per-sample streams
_DELTA_EPS = 1.0 / 255.0  # a defect changes a pixel when |delta| reaches one grey level
_NOISE_SIGMA = 1.5 / 255.0  # sensor noise, standard deviation
_MIN_MASK_PIXELS = 6
_STALE = re.compile(r"^\d+(_mask)?\.png$")


# ----------------------------------------------------------------------------- basics


@dataclass(frozen=True)
class Style:
    """Per-category look, drawn once from the category seed (shared by all its images)."""

    base_rgb: tuple[float, float, float]  # surface / part colour, linear-ish RGB in [0, 1]
    angle: float  # tiles: brushing direction, degrees
    light: float  # direction towards the light in the image plane, radians (y down)
    grad: float  # strength of the illumination gradient across the image
    streak_sigma: float  # tiles: streak length (Gaussian sigma in px at size 256)
    a_streak: float
    a_long: float
    a_weave: float
    period: float  # tiles: weave period in px at size 256
    n_holes: int  # parts: bolt holes
    rot0: float  # parts: nominal rotation, degrees
    bg_level: float  # parts: fixture brightness


@dataclass
class Scene:
    """A clean rendered scene before noise.

    ``img`` float32 ``[S, S, 3]`` RGB in ``[0, 1]``; ``region`` float32 ``[S, S]``: where a
    defect may change pixels (1 everywhere for tiles, the part's coverage for parts);
    ``anchor_ok`` bool ``[S, S]``: where a defect may be centred; ``crack_origins``:
    ``(x, y, angle)`` edge points where cracks like to start (parts only); ``light``:
    direction towards the light, radians (shades dents).
    """

    img: np.ndarray
    region: np.ndarray
    anchor_ok: np.ndarray
    crack_origins: list[tuple[float, float, float]]
    light: float


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)``, each float32 ``[S, S]`` (read-only, cached)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _unit(a: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-std copy of a float32 array (any shape)."""
    a = a - a.mean()
    return a / (a.std() + 1e-6)


def _blur1d(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian-like blur of a float32 ``[H, W]`` along x (``axis=1``) or y (``axis=0``).

    Large sigmas use three box passes (cost independent of sigma), small ones a true
    Gaussian.
    """
    if sigma <= 0.0:
        return a
    if sigma > 2.5:
        k = int(round(np.sqrt(4.0 * sigma * sigma + 1.0))) | 1  # 3 boxes of width k: var = (k^2 - 1) / 4
        ksize = (k, 1) if axis == 1 else (1, k)
        for _ in range(3):
            a = cv2.blur(a, ksize, borderType=cv2.BORDER_REFLECT)
        return a
    r = max(1, int(3.0 * sigma + 0.5))
    ksize = (2 * r + 1, 1) if axis == 1 else (1, 2 * r + 1)
    return cv2.GaussianBlur(a, ksize, sigmaX=sigma if axis == 1 else 0.01, sigmaY=sigma if axis == 0 else 0.01,
                            borderType=cv2.BORDER_REFLECT)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sx: float, sy: float | None = None) -> np.ndarray:
    """White noise blurred by ~Gaussians (``sx`` along x, ``sy`` along y), float32 ``[H, W]``, unit std."""
    n = rng.standard_normal(shape, dtype=np.float32)
    n = _blur1d(_blur1d(n, sx, axis=1), sx if sy is None else sy, axis=0)
    return _unit(n)


def _lowfreq(rng: np.random.Generator, size: int, cells: int = 5) -> np.ndarray:
    """Smooth large-scale variation: a ``cells x cells`` random grid upsampled, float32 ``[S, S]``, unit std."""
    g = rng.standard_normal((cells, cells), dtype=np.float32)
    return _unit(cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """Hermite smoothstep of ``clip(x, 0, 1)``, same shape."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _cov(d: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in px (positive inside), same shape."""
    return np.clip(d + 0.5, 0.0, 1.0)


def _fp(x: float, y: float) -> tuple[int, int]:
    """A point in OpenCV's 4-bit fixed point (use with ``shift=4``)."""
    return int(round(x * 16.0)), int(round(y * 16.0))


def _illumination(rng: np.random.Generator, style: Style, size: int) -> np.ndarray:
    """Gentle linear gradient towards the light plus a vignette, float32 ``[S, S]`` around 1."""
    yy, xx = _grid(size)
    c = (size - 1) / 2.0
    phi = style.light + rng.normal(0.0, 0.1)
    grad = style.grad * (1.0 + rng.normal(0.0, 0.1))
    lin = ((xx - c) * np.cos(phi) + (yy - c) * np.sin(phi)) / size
    r2 = ((xx - c) ** 2 + (yy - c) ** 2) / (0.5 * size * size)
    return (1.0 + grad * lin - 0.07 * r2).astype(np.float32)


# ----------------------------------------------------------------------------- styles


def make_style(kind: str, seed: int) -> Style:
    """The look of a category, deterministic from ``(kind, seed)``."""
    _check_kind(kind)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STYLE_KEY, KINDS.index(kind)]))
    if kind == "tiles":
        grey = rng.uniform(0.46, 0.58)
        tint = rng.normal(0.0, 0.008, 3)
        base = (grey - 0.01 + tint[0], grey + tint[1], grey + 0.025 + tint[2])  # cool steel grey
    else:
        palettes = [(0.64, 0.65, 0.67), (0.70, 0.69, 0.66), (0.72, 0.60, 0.40)]  # steel, aluminium, brass
        base = palettes[int(rng.integers(len(palettes)))]
        base = tuple(float(b) for b in np.clip(np.asarray(base) + rng.normal(0.0, 0.015, 3), 0.2, 0.9))
    return Style(
        base_rgb=tuple(float(b) for b in base),
        angle=float(rng.uniform(-35.0, 35.0)),
        light=float(rng.uniform(-2.6, -2.0)),  # from the upper left
        grad=float(rng.uniform(0.12, 0.22)),
        streak_sigma=float(rng.uniform(10.0, 16.0)),
        a_streak=float(rng.uniform(0.06, 0.09)),
        a_long=float(rng.uniform(0.03, 0.05)),
        a_weave=float(rng.uniform(0.035, 0.05)),
        period=float(rng.uniform(6.0, 9.0)),
        n_holes=int(rng.choice([4, 5, 6, 8])),
        rot0=float(rng.uniform(0.0, 360.0)),
        bg_level=float(rng.uniform(0.09, 0.14)),
    )


# ----------------------------------------------------------------------------- clean scenes


def _render_tiles(style: Style, rng: np.random.Generator, size: int) -> Scene:
    """A brushed / woven surface patch; ``img`` float32 ``[S, S, 3]``."""
    s = size / 256.0
    yy, xx = _grid(size)
    c = (size - 1) / 2.0
    pad = int(np.ceil(0.22 * size)) + 4  # enough for the rotated crop to stay inside
    big = size + 2 * pad

    # Streaks along x at two scales plus fine grain, rotated to the brushing direction.
    streak = _noise(rng, (big, big), style.streak_sigma * s, max(0.5, 0.6 * s))
    long = _noise(rng, (big, big), 3.5 * style.streak_sigma * s, max(1.0, 2.5 * s))
    tex = style.a_streak * streak + style.a_long * long
    angle = style.angle + rng.normal(0.0, 1.0)
    shift = rng.uniform(-3.0, 3.0, 2) * s
    m = cv2.getRotationMatrix2D(((big - 1) / 2.0, (big - 1) / 2.0), angle, 1.0)
    m[:, 2] += (shift[0] - pad, shift[1] - pad)
    tex = cv2.warpAffine(tex, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    grain = _noise(rng, (size, size), max(0.5, 0.7 * s))

    # Fine periodic weave, aligned with the brushing, random phase and a small shift.
    a = np.deg2rad(-angle)
    u = (xx - c) * np.cos(a) + (yy - c) * np.sin(a) + shift[0]
    v = -(xx - c) * np.sin(a) + (yy - c) * np.cos(a) + shift[1]
    p = max(4.0, style.period * s)
    ph = rng.uniform(0.0, 2.0 * np.pi, 2)
    weave = 0.5 * np.sin(2.0 * np.pi * u / (1.7 * p) + ph[0]) + 0.5 * np.sin(2.0 * np.pi * v / p + ph[1])

    lum = 1.0 + tex + 0.022 * grain + style.a_weave * weave + 0.02 * _lowfreq(rng, size)
    lum *= _illumination(rng, style, size) * (1.0 + rng.normal(0.0, 0.025))
    base = np.asarray(style.base_rgb, np.float32)
    chroma = 0.006 * np.stack([_lowfreq(rng, size, 4) for _ in range(3)], axis=-1)
    img = (base * lum[..., None] + chroma).astype(np.float32)

    margin = max(4, int(0.12 * size))
    anchor_ok = np.zeros((size, size), bool)
    anchor_ok[margin:-margin, margin:-margin] = True
    return Scene(img, np.ones((size, size), np.float32), anchor_ok, [], style.light)


def _render_parts(style: Style, rng: np.random.Generator, size: int) -> Scene:
    """A turned flange with a bore and bolt holes on a dark fixture; ``img`` float32 ``[S, S, 3]``."""
    s = size / 256.0
    yy, xx = _grid(size)
    c = (size - 1) / 2.0
    cx, cy = c + rng.uniform(-3.0, 3.0, 2) * s
    rot = np.deg2rad(style.rot0 + rng.uniform(-3.0, 3.0))
    dx, dy = xx - cx, yy - cy
    rho = np.sqrt(dx * dx + dy * dy)
    big_r, bore_r = 0.37 * size, 0.12 * size
    ring_r, hole_r = 0.255 * size, 0.042 * size
    cham = max(1.5, 3.5 * s)  # chamfer width, px
    light = style.light
    lx, ly = np.cos(light), np.sin(light)
    cos_l = (dx * lx + dy * ly) / np.maximum(rho, 1e-3)  # cos(polar angle - light)

    # Coverage of the material and the shading of the chamfers (normal dotted with light).
    outer = _cov(big_r - rho)
    bore = _cov(rho - bore_r)
    edge = np.clip(1.0 - (big_r - rho) / cham, 0.0, 1.0) * cos_l  # slopes outwards
    edge -= np.clip(1.0 - (rho - bore_r) / cham, 0.0, 1.0) * cos_l  # slopes into the bore
    holes = np.ones_like(rho)
    origins: list[tuple[float, float, float]] = []
    win = hole_r + cham + 2.0  # outside this window a hole changes nothing
    for k in range(style.n_holes):
        ang = rot + 2.0 * np.pi * k / style.n_holes
        px, py = cx + ring_r * np.cos(ang), cy + ring_r * np.sin(ang)
        y0, y1 = max(0, int(py - win)), min(size, int(py + win) + 2)
        x0, x1 = max(0, int(px - win)), min(size, int(px + win) + 2)
        box = (slice(y0, y1), slice(x0, x1))
        hdx, hdy = xx[box] - px, yy[box] - py
        d = np.sqrt(hdx * hdx + hdy * hdy)
        holes[box] *= _cov(d - hole_r)
        towards_centre = -(hdx * lx + hdy * ly) / np.maximum(d, 1e-3)  # the chamfer slopes into the hole
        edge[box] += np.clip(1.0 - (d - hole_r) / cham, 0.0, 1.0) * (d > hole_r - 1.0) * towards_centre
        for beta in (ang, ang + np.pi / 2, ang - np.pi / 2):  # cracks start at the hole wall
            origins.append((px + hole_r * np.cos(beta), py + hole_r * np.sin(beta), beta))
    material = (outer * bore * holes).astype(np.float32)

    # Turned face: anisotropic sheen, concentric turning marks, grain.
    n_prof = int(big_r) + 8
    prof = cv2.GaussianBlur(rng.standard_normal((1, n_prof)).astype(np.float32), (0, 0), 0.8).ravel()
    rings = np.interp(rho, np.arange(n_prof, dtype=np.float32), _unit(prof)).astype(np.float32)
    rings += 0.6 * np.sin(2.0 * np.pi * rho / max(3.0, 3.2 * s) + rng.uniform(0, 2 * np.pi))
    sheen = 1.0 - 2.0 * cos_l * cos_l  # cos(2 (angle - light - pi/2)): a bow-tie highlight
    lum = 0.80 + 0.10 * sheen + 0.025 * rings + 0.015 * _noise(rng, (size, size), 0.6) + 0.28 * edge
    lum += 0.02 * _lowfreq(rng, size)
    part = np.asarray(style.base_rgb, np.float32) * lum[..., None]

    # Dark fixture with a soft shadow of the part.
    bg = style.bg_level * (1.0 + 0.15 * _noise(rng, (size, size), max(0.6, 1.0 * s)) + 0.08 * _lowfreq(rng, size))
    off = 5.0 * s * np.array([-np.cos(light), -np.sin(light)])
    sh = cv2.warpAffine(material, np.float32([[1, 0, off[0]], [0, 1, off[1]]]), (size, size))
    bg *= 1.0 - 0.6 * cv2.GaussianBlur(sh, (0, 0), max(1.0, 4.0 * s))
    bg_rgb = np.stack([bg * 0.97, bg, bg * 1.04], axis=-1)

    illum = _illumination(rng, style, size) * (1.0 + rng.normal(0.0, 0.025))
    img = (bg_rgb * (1.0 - material[..., None]) + part * material[..., None]) * illum[..., None]

    margin = max(2, int(round(0.045 * size)))
    kern = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    anchor_ok = cv2.erode((material > 0.999).astype(np.uint8), kern).astype(bool)
    return Scene(img.astype(np.float32), material, anchor_ok, origins, light)


def _render_clean(kind: str, style: Style, rng: np.random.Generator, size: int) -> Scene:
    """Dispatch to the scene renderer of ``kind``."""
    return _render_tiles(style, rng, size) if kind == "tiles" else _render_parts(style, rng, size)


# ----------------------------------------------------------------------------- defects


def _pick_anchor(scene: Scene, rng: np.random.Generator) -> tuple[float, float]:
    """A random allowed defect centre ``(x, y)`` in px."""
    idx = np.flatnonzero(scene.anchor_ok)
    i = int(idx[rng.integers(idx.size)])
    size = scene.anchor_ok.shape[1]
    return float(i % size) + rng.uniform(-0.5, 0.5), float(i // size) + rng.uniform(-0.5, 0.5)


def _scratch(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    """One or two thin, slightly curved anti-aliased lines; returns delta float32 ``[S, S, 3]``."""
    img = scene.img
    canvas = np.zeros((size, size), np.uint8)
    x0, y0 = _pick_anchor(scene, rng)
    theta = rng.uniform(0.0, np.pi)
    length = rng.uniform(0.18, 0.35) * size
    n_lines = 2 if rng.random() < 0.3 else 1
    for j in range(n_lines):
        off = j * rng.uniform(3.0, 6.0) * size / 256.0
        th = theta + j * rng.normal(0.0, 0.05)
        ux, uy = np.cos(th), np.sin(th)
        px, py = -uy, ux
        bend = rng.uniform(-0.12, 0.12) * length
        t = np.linspace(0.0, 1.0, 40)
        along = (t - 0.5) * length * (1.0 - 0.25 * j)
        across = off + bend * 4.0 * t * (1.0 - t)  # quadratic bow
        xs, ys = x0 + along * ux + across * px, y0 + along * uy + across * py
        inten = np.sin(np.pi * t) ** 0.5 * (0.65 + 0.35 * np.sin(2 * np.pi * t * rng.uniform(1, 3) + rng.uniform(0, 6)))
        for i in range(len(t) - 1):
            col = int(round(255 * (0.5 + 0.5 * inten[i]) * (0.75 if j else 1.0)))
            cv2.line(canvas, _fp(xs[i], ys[i]), _fp(xs[i + 1], ys[i + 1]), col, 1, cv2.LINE_AA, shift=4)
    alpha = cv2.GaussianBlur(canvas.astype(np.float32) / 255.0, (0, 0), 0.5)[..., None]
    if rng.random() < 0.5:  # bright scratch: bare metal catching the light
        return rng.uniform(0.35, 0.55) * alpha * (1.0 - img)
    return -rng.uniform(0.3, 0.45) * alpha * img


def _dent(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth elliptical depression shaded by the light (lit and shadowed flanks); delta ``[S, S, 3]``."""
    yy, xx = _grid(size)
    x0, y0 = _pick_anchor(scene, rng)
    a = rng.uniform(0.035, 0.07) * size
    b = a * rng.uniform(0.6, 1.0)
    psi = rng.uniform(0.0, np.pi)
    u = ((xx - x0) * np.cos(psi) + (yy - y0) * np.sin(psi)) / a
    v = (-(xx - x0) * np.sin(psi) + (yy - y0) * np.cos(psi)) / b
    q = np.clip(1.0 - (u * u + v * v), 0.0, None)  # 1 at the centre, 0 on and outside the rim
    depth = q**3  # compact support, C2 at the rim
    gy, gx = np.gradient(depth)
    slope = gx * np.cos(scene.light) + gy * np.sin(scene.light)  # normal ~ (gx, gy, 1) for a pit
    slope /= np.abs(slope).max() + 1e-9
    # A depression: the flank facing the light is the far one (tilted towards it).
    shade = rng.uniform(0.22, 0.35) * slope - rng.uniform(0.05, 0.1) * depth
    return (shade[..., None] * scene.img).astype(np.float32)


def _spot(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    """A stain with an irregular boundary, a darker rim and a colour shift; delta ``[S, S, 3]``."""
    img = scene.img
    yy, xx = _grid(size)
    x0, y0 = _pick_anchor(scene, rng)
    rad = rng.uniform(0.03, 0.06) * size
    asp = rng.uniform(0.65, 1.0)
    psi = rng.uniform(0.0, np.pi)
    u = ((xx - x0) * np.cos(psi) + (yy - y0) * np.sin(psi)) / rad
    v = (-(xx - x0) * np.sin(psi) + (yy - y0) * np.cos(psi)) / (rad * asp)
    r = np.sqrt(u * u + v * v)
    wobble = _noise(rng, (size, size), max(1.0, 0.3 * rad))
    field = 1.0 - r + 0.28 * np.clip(wobble, -2.5, 2.5)
    blob = _smoothstep(field / 0.15) * _smoothstep((1.9 - r) / 0.4)
    rim = 4.0 * blob * (1.0 - blob)
    body = 0.55 + 0.25 * _noise(rng, (size, size), max(0.8, 0.15 * rad))
    alpha = np.clip(blob * body + 0.35 * rim, 0.0, 1.0)[..., None]
    choice = int(rng.integers(3))
    if choice == 0:  # rust / dried coolant: brown multiply
        tint = np.float32([0.92, 0.72, 0.52])
        return (img * (tint - 1.0) * alpha * rng.uniform(0.7, 1.0)).astype(np.float32)
    if choice == 1:  # oil film: darker, slightly bluish
        tint = np.float32([0.72, 0.74, 0.82])
        return (img * (tint - 1.0) * alpha * rng.uniform(0.7, 1.0)).astype(np.float32)
    residue = np.float32([0.86, 0.85, 0.78])  # whitish residue: blend towards a pale colour
    return ((residue - img) * alpha * rng.uniform(0.3, 0.45)).astype(np.float32)


def _crack(scene: Scene, rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin, jagged, branching dark line (random walk with persistent drift); delta ``[S, S, 3]``."""
    s = size / 256.0
    canvas = np.zeros((size, size), np.uint8)
    if scene.crack_origins and rng.random() < 0.7:
        x, y, ang = scene.crack_origins[int(rng.integers(len(scene.crack_origins)))]
        ang += rng.normal(0.0, 0.3)
    else:
        (x, y), ang = _pick_anchor(scene, rng), rng.uniform(0.0, 2.0 * np.pi)
    step = max(1.5, 2.8 * s)
    stack = [(x, y, ang, rng.uniform(0.15, 0.28) * size, 1.0)]
    n_branches = 0
    while stack:
        x, y, a, length, w = stack.pop()
        n = max(3, int(length / step))
        drift = 0.0
        for i in range(n):
            drift = 0.85 * drift + rng.normal(0.0, 0.1)
            ai = a + drift + rng.normal(0.0, 0.45)  # jagged
            nx, ny = x + step * np.cos(ai), y + step * np.sin(ai)
            col = int(round(255 * w * (1.0 - 0.5 * i / n) * rng.uniform(0.85, 1.0)))
            cv2.line(canvas, _fp(x, y), _fp(nx, ny), col, 1, cv2.LINE_AA, shift=4)
            if s >= 0.75 and w >= 1.0 and i < 0.4 * n:  # a wider opening near the origin
                ox, oy = -0.8 * np.sin(ai), 0.8 * np.cos(ai)
                cv2.line(canvas, _fp(x + ox, y + oy), _fp(nx + ox, ny + oy), col, 1, cv2.LINE_AA, shift=4)
            if n_branches < 4 and w > 0.5 and i > 2 and rng.random() < 0.06:
                side = 1.0 if rng.random() < 0.5 else -1.0
                rest = (n - i) * step * rng.uniform(0.3, 0.6)
                stack.append((nx, ny, ai + side * rng.uniform(0.4, 1.1), rest, 0.7 * w))
                n_branches += 1
            x, y = nx, ny
    alpha = canvas.astype(np.float32)[..., None] / 255.0
    return (-rng.uniform(0.5, 0.7) * alpha * scene.img).astype(np.float32)


_DEFECTS = {"scratch": _scratch, "dent": _dent, "spot": _spot, "crack": _crack}


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes of a 0/255 uint8 mask ``[S, S]`` (never removes a pixel)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(mask)
    cv2.drawContours(out, contours, -1, 255, thickness=cv2.FILLED)
    return out | mask


def apply_defect(scene: Scene, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``defect`` on ``scene``: ``(delta float32 [S, S, 3], mask uint8 [S, S] 0/255)``.

    ``delta`` is zero exactly outside ``mask``; the mask is the set of pixels the delta
    changes by at least one grey level, closed and hole-filled.
    """
    if defect not in _DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; expected one of {DEFECT_TYPES}")
    size = scene.img.shape[0]
    for _ in range(20):
        delta = _DEFECTS[defect](scene, rng, size) * scene.region[..., None]
        keep = np.abs(delta).max(axis=-1) >= _DELTA_EPS
        if int(keep.sum()) >= _MIN_MASK_PIXELS:
            delta[~keep] = 0.0
            mask = keep.astype(np.uint8) * 255
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)) | mask
            return delta.astype(np.float32), _fill_holes(mask)
    raise RuntimeError(f"could not place a visible {defect} defect")  # pragma: no cover


# ----------------------------------------------------------------------------- samples


def _to_uint8(img: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Float RGB ``[S, S, 3]`` plus noise -> uint8 ``[S, S, 3]``."""
    return np.clip(np.rint((img + noise) * 255.0), 0, 255).astype(np.uint8)


def render_sample(
    kind: str,
    size: int,
    seed: int,
    split: str,
    index: int,
    defect: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one sample: ``(clean, defective, mask)``.

    ``clean`` and ``defective`` are RGB uint8 ``[S, S, 3]`` with identical sensor noise
    (``defective`` is ``clean`` when ``defect`` is None); ``mask`` is uint8 ``[S, S]``,
    0/255, all zero without a defect. The sample is fully determined by
    ``(kind, size, seed, split, index, defect)``; ``generate_category`` writes exactly
    these arrays.
    """
    _check_kind(kind)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    style = make_style(kind, seed)
    ss_clean, ss_noise, ss_defect = np.random.SeedSequence([seed, SPLITS.index(split), index]).spawn(3)
    scene = _render_clean(kind, style, np.random.default_rng(ss_clean), size)
    noise = np.random.default_rng(ss_noise).standard_normal(scene.img.shape, dtype=np.float32) * _NOISE_SIGMA
    clean = _to_uint8(scene.img, noise)
    if defect is None:
        return clean, clean.copy(), np.zeros((size, size), np.uint8)
    delta, mask = apply_defect(scene, defect, np.random.default_rng(ss_defect))
    return clean, _to_uint8(scene.img + delta, noise), mask


# ----------------------------------------------------------------------------- category


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def _write_png(path: Path, img: np.ndarray) -> None:
    """Write RGB ``[H, W, 3]`` or gray ``[H, W]`` uint8 as PNG."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def _prepare_dir(path: Path) -> Path:
    """Create ``path`` and remove stale generated images (``NNN.png``, ``NNN_mask.png``) from it."""
    path.mkdir(parents=True, exist_ok=True)
    stale = [p for p in path.iterdir() if p.is_file() and _STALE.match(p.name)]
    for p in stale:
        p.unlink()
    if stale:
        log.debug("removed %d stale images from %s", len(stale), path)
    return path


def generate_category(
    root: Path | str,
    kind: str = "tiles",
    n_train: int = 60,
    n_test_good: int = 12,
    n_test_defect: int = 24,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write a synthetic category in MVTec AD layout under ``root`` and return ``root``.

    Defective test images are dealt round-robin over ``DEFECT_TYPES``; defect image
    ``j`` is ``render_sample(kind, size, seed, "test_defect", j, DEFECT_TYPES[j % 4])``
    and is saved as ``test/<defect>/<j // 4>.png`` with its mask in
    ``ground_truth/<defect>/<j // 4>_mask.png``. Previously generated images in these
    folders are replaced.
    """
    _check_kind(kind)
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    if min(n_train, n_test_good, n_test_defect) < 0 or seed < 0:
        raise ValueError("counts and seed must be non-negative")
    root = Path(root)
    t0 = time.perf_counter()
    width = max(3, len(str(max(n_train, n_test_good, n_test_defect))))
    name = f"{{:0{width}d}}".format

    train_dir = _prepare_dir(root / "train" / "good")
    for i in range(n_train):
        _write_png(train_dir / f"{name(i)}.png", render_sample(kind, size, seed, "train", i)[0])
    good_dir = _prepare_dir(root / "test" / "good")
    for i in range(n_test_good):
        _write_png(good_dir / f"{name(i)}.png", render_sample(kind, size, seed, "test_good", i)[0])
    used = DEFECT_TYPES[: min(n_test_defect, len(DEFECT_TYPES))]
    dirs = {d: (_prepare_dir(root / "test" / d), _prepare_dir(root / "ground_truth" / d)) for d in used}
    for d in DEFECT_TYPES[len(used) :]:  # types left empty this time: drop their old images
        for folder in (root / "test" / d, root / "ground_truth" / d):
            if folder.is_dir():
                _prepare_dir(folder)
                if not any(folder.iterdir()):
                    folder.rmdir()
    for j in range(n_test_defect):
        defect = DEFECT_TYPES[j % len(DEFECT_TYPES)]
        _, img, mask = render_sample(kind, size, seed, "test_defect", j, defect)
        img_dir, gt_dir = dirs[defect]
        stem = name(j // len(DEFECT_TYPES))
        _write_png(img_dir / f"{stem}.png", img)
        _write_png(gt_dir / f"{stem}_mask.png", mask)
    log.info(
        "synthetic %s category at %s: %d train, %d good and %d defective test images (%dpx, seed %d) in %.2fs",
        kind, root, n_train, n_test_good, n_test_defect, size, seed, time.perf_counter() - t0,
    )
    return root


def pick_images(data: Path) -> list[Path]:
    """One defective and one good test image (the first of each, by name)."""
    test = data / "test"
    defect_dirs = sorted(p for p in test.iterdir() if p.is_dir() and p.name != "good")
    picks = [list_images(defect_dirs[0])[0]] if defect_dirs else []
    if (test / "good").is_dir():
        picks.append(list_images(test / "good")[0])
    return picks
