"""Shifted, rotated and photometrically changed copies of an MVTec-layout category.

    PYTHONPATH=. .venv/bin/python benchmarks/variants.py --data ../shared/data/mvtec_ad/bottle \
        --kind shift --out runs/variants/bottle-shift

Kinds (seeded, images and masks transformed together, reflected border for images):
- ``shift``: every image (train and test) shifted by up to ±5 % of its size on each axis:
  a line whose parts are not fixtured, at fit time as at run time;
- ``rotshift``: the same with a rotation in ±15°;
- ``bright``: the test goods 15 % brighter (train and defects untouched): lighting that
  changed between the fit and the line;
- ``scene``: an unfixtured object on a noisy dark background, photographed in two sessions:
  each image's part (a disc cut from the original, 70 % of the side) is pasted at a random
  place (±12 %) on dark sensor noise; the test images (goods and defects) come from a
  second session with a brighter, noisier background.
- ``texscene``: harder: the part is also turned by any angle and scaled by ±5 %, on a dark
  *textured* background (grain and blotches that differ in every image), and the second
  session's test images are lit differently (gain 1.15, gamma 0.9) and slightly out of focus.
- ``session``: the parts stay fixtured, but every test image (goods and defects) comes from a
  later session: 10 % darker, gamma 1.1, moved by up to 2 % and turned by up to 2°, slightly
  out of focus (sigma 0.1 % of the side); train untouched.
- ``dark``: a dark surface: every image at a quarter of its brightness (gamma 1.2) with sensor
  noise of 2 grey levels, as a camera at high gain sees a dark part.
- ``subtle``: the test defects made faint: inside each mask (feathered) the defect is blended
  at 40 % over the same image with the mask inpainted (``cv2.inpaint``), so it keeps its shape
  and kind but loses most of its contrast; goods and train untouched.
Untouched files are symlinked.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.jobs.dataset import list_images, list_test_set  # noqa: E402

KINDS = {"shift": (0.0, 0.05), "rotshift": (15.0, 0.05), "bright": None, "scene": None, "texscene": None,
         "session": None, "dark": None, "subtle": None}
SESSIONS = {"train": (25.0, 8.0), "test": (40.0, 14.0)}  # background mean and noise sigma, grey levels


def _scene(path: Path, dst: Path, mask_path: Path | None, session: str, rng: np.random.Generator) -> None:
    """The part of ``path`` (a centred disc, 70 % of the side) at a random place on a noisy dark background."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    side = int(0.7 * min(h, w))
    yy, xx = np.mgrid[:h, :w]
    disc = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (side / 2) ** 2
    m = np.float32([[0.7, 0, 0.15 * w], [0, 0.7, 0.15 * h]])
    m[:, 2] += rng.uniform(-0.12, 0.12, 2) * (w, h)
    mean, sigma = SESSIONS[session]
    out = np.clip(rng.normal(mean, sigma, img.shape), 0, 255).astype(np.uint8)
    part = cv2.warpAffine(img, m, (w, h))
    keep = cv2.warpAffine(disc.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST).astype(bool)
    out[keep] = part[keep]
    _write_placed(dst, out, mask_path, m, keep)


def _write_placed(dst: Path, out: np.ndarray, mask_path: Path | None, m: np.ndarray, keep: np.ndarray) -> None:
    """Write the scene ``out`` to ``dst`` and, for a defect, its mask moved by ``m`` and cut to the
    part (``keep``) under the category's ``ground_truth`` folder."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), out)
    if mask_path is not None:
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        moved = cv2.warpAffine(mask, m, keep.shape[::-1], flags=cv2.INTER_NEAREST, borderValue=0) * keep
        mdst = dst.parents[2] / "ground_truth" / dst.parent.name / mask_path.name
        mdst.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(mdst), moved.astype(np.uint8))


def _textured_background(shape: tuple[int, ...], session: str, rng: np.random.Generator) -> np.ndarray:
    """A dark textured background of ``shape`` (uint8): low-frequency blotches and fine grain,
    different in every image; the second session's is brighter and coarser."""
    h, w = shape[:2]
    mean, sigma = SESSIONS[session]
    blotch = cv2.resize(rng.normal(0, 1, (h // 32 + 2, w // 32 + 2)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.5 if session == "train" else 2.5)
    grey = mean + 2.0 * sigma * blotch + 1.5 * sigma * grain / max(float(grain.std()), 1e-6)
    return np.clip(np.repeat(grey[..., None], shape[2], axis=2), 0, 255).astype(np.uint8)


def _texscene(path: Path, dst: Path, mask_path: Path | None, session: str, rng: np.random.Generator) -> None:
    """The part of ``path`` (a centred disc, 70 % of the side) turned, scaled and placed at random
    on a dark textured background; the test session lit differently and slightly out of focus."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    side = int(0.7 * min(h, w))
    yy, xx = np.mgrid[:h, :w]
    disc = (((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (side / 2) ** 2).astype(np.uint8)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(0, 360), 0.7 * rng.uniform(0.95, 1.05))
    m[:, 2] += rng.uniform(-0.12, 0.12, 2) * (w, h)
    out = _textured_background(img.shape, session, rng)
    part = cv2.warpAffine(img, m, (w, h))
    keep = cv2.warpAffine(disc, m, (w, h), flags=cv2.INTER_NEAREST).astype(bool)
    out[keep] = part[keep]
    if session == "test":
        x = 255.0 * (np.clip(out.astype(np.float32) * 1.15, 0, 255) / 255.0) ** 0.9
        out = cv2.GaussianBlur(np.clip(x, 0, 255).astype(np.uint8), (0, 0), 0.0015 * min(h, w))
    _write_placed(dst, out, mask_path, m, keep)


def _later_session(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``img`` as a later session sees it, and the affine matrix that moved it (for its mask)."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-2, 2), 1.0)
    m[:, 2] += rng.uniform(-0.02, 0.02, 2) * (w, h)
    moved = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    toned = 255.0 * (np.clip(moved * 0.9, 0, 255) / 255.0) ** 1.1
    return cv2.GaussianBlur(np.clip(toned, 0, 255).astype(np.uint8), (0, 0), 0.001 * min(h, w)), m


def _dark(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = 255.0 * (img.astype(np.float32) / 255.0) ** 1.2 * 0.25 + rng.normal(0, 2.0, img.shape[:2])[..., None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _faint(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The defect inside ``mask`` blended at 40 % over the inpainted image, feathered at the edge."""
    grow = cv2.dilate(mask, np.ones((5, 5), np.uint8))
    clean = cv2.inpaint(img, grow, 5, cv2.INPAINT_TELEA).astype(np.float32)
    alpha = 0.4 * cv2.GaussianBlur((grow > 0).astype(np.float32), (0, 0), 2.0)[..., None]
    return np.clip(np.rint(clean + alpha * (img.astype(np.float32) - clean)), 0, 255).astype(np.uint8)


def _write(dst: Path, img: np.ndarray) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), img)


def _warp(path: Path, dst: Path, m: np.ndarray, mask: bool) -> None:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if mask else cv2.IMREAD_UNCHANGED)
    h, w = img.shape[:2]
    if mask:
        out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    else:
        out = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), out)


def _matrix(path: Path, degrees: float, shift: float, rng: np.random.Generator) -> np.ndarray:
    h, w = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-degrees, degrees), 1.0)
    m[:, 2] += rng.uniform(-shift, shift, 2) * (w, h)
    return m


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def make_variant(data: Path, out: Path, kind: str, seed: int = 0) -> Path:
    """Write the ``kind`` copy of ``data`` under ``out`` and return ``out``."""
    rng = np.random.default_rng(seed)
    samples, _ = list_test_set(data)
    train = list_images(data / "train" / "good")
    if kind in ("scene", "texscene"):
        make = _scene if kind == "scene" else _texscene
        for f in train:
            make(f, out / "train" / "good" / f.name, None, "train", rng)
        for s in samples:
            make(s.path, out / "test" / s.defect / s.path.name, s.mask_path, "test", rng)
        return out
    if kind == "dark":
        for f in train:
            _write(out / "train" / "good" / f.name, _dark(cv2.imread(str(f), cv2.IMREAD_COLOR), rng))
        for s in samples:
            _write(out / "test" / s.defect / s.path.name, _dark(cv2.imread(str(s.path), cv2.IMREAD_COLOR), rng))
            if s.mask_path is not None:
                _link(s.mask_path, out / "ground_truth" / s.defect / s.mask_path.name)
        return out
    if kind in ("session", "subtle"):
        for f in train:
            _link(f, out / "train" / "good" / f.name)
        for s in samples:
            img = cv2.imread(str(s.path), cv2.IMREAD_COLOR)
            mask = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE) if s.mask_path is not None else None
            mdst = out / "ground_truth" / s.defect / s.mask_path.name if s.mask_path is not None else None
            if kind == "session":
                img, m = _later_session(img, rng)
                if mask is not None:
                    _write(mdst, cv2.warpAffine(mask, m, mask.shape[::-1], flags=cv2.INTER_NEAREST, borderValue=0))
            elif mask is not None and mask.any():
                img = _faint(img, (mask > 0).astype(np.uint8))
                _link(s.mask_path, mdst)
            _write(out / "test" / s.defect / s.path.name, img)
        return out
    if kind == "bright":
        for f in train:
            _link(f, out / "train" / "good" / f.name)
        for s in samples:
            dst = out / "test" / s.defect / s.path.name
            if s.defect == "good":
                img = cv2.imread(str(s.path), cv2.IMREAD_UNCHANGED).astype(np.float32) * 1.15
                dst.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(dst), np.clip(img, 0, 255).astype(np.uint8))
            else:
                _link(s.path, dst)
                if s.mask_path is not None:
                    _link(s.mask_path, out / "ground_truth" / s.defect / s.mask_path.name)
        return out
    degrees, shift = KINDS[kind]
    for f in train:
        _warp(f, out / "train" / "good" / f.name, _matrix(f, degrees, shift, rng), mask=False)
    for s in samples:
        m = _matrix(s.path, degrees, shift, rng)
        _warp(s.path, out / "test" / s.defect / s.path.name, m, mask=False)
        if s.mask_path is not None:
            _warp(s.mask_path, out / "ground_truth" / s.defect / s.mask_path.name, m, mask=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--kind", required=True, choices=sorted(KINDS))
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(make_variant(args.data, args.out, args.kind, args.seed))


if __name__ == "__main__":
    main()
