"""Validation images for the fit job: synthetic defects with exact masks (sensitivity) and
benign nuisance changes (robustness), both pure and seeded."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from model.jobs.demo_data import render_sample
from model.training.cutpaste import cutpaste, cutpaste_scar
from model.training.nuisance import NUISANCES, apply_nuisance, nuisance_suite
from model.training.synthetic_defects import (
    FAMILIES,
    SIZES,
    defect_suite,
    foreground_mask,
    perlin_noise,
    synthetic_defect,
)

S = 256


@pytest.fixture(scope="module")
def part() -> np.ndarray:
    """A turned flange with a bore and bolt holes on a dark fixture, RGB [256, 256, 3]."""
    return render_sample("parts", S, 0, "train", 0)[0]


@pytest.fixture(scope="module")
def grey_tile() -> np.ndarray:
    """A brushed textured surface, grey (three equal channels) as a magnetic-tile image."""
    tile = render_sample("tiles", S, 0, "train", 0)[0]
    return np.repeat(cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (S, S, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mid_grey() -> np.ndarray:
    """A mid-grey image with gentle structure (values 100..156), so geometric changes show."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    g = 128 + 20 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 8 * np.sin((xx + yy) / 5.0)
    return np.repeat(np.clip(np.rint(g), 100, 156).astype(np.uint8)[..., None], 3, axis=2)


def disc_image(noisy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc on a dark background, and the disc's mask."""
    yy, xx = np.mgrid[0:S, 0:S]
    disc = (yy - 120) ** 2 + (xx - 136) ** 2 < 70**2
    img = np.where(disc[..., None], np.uint8([200, 190, 170]), np.uint8([25, 25, 30])).astype(np.float32)
    if noisy:
        img += np.random.default_rng(0).normal(0, 3, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), disc


# ----------------------------------------------------------------------------- foreground


def test_foreground_finds_a_bright_disc_on_a_dark_background():
    img, disc = disc_image()
    fg = foreground_mask(img)
    assert fg.shape == (S, S) and fg.dtype == bool
    iou = (fg & disc).sum() / (fg | disc).sum()
    assert iou > 0.95


def test_foreground_is_everything_for_textures_and_blank_images(noise, grey_tile):
    for img in (noise, grey_tile, np.full((S, S, 3), 90, np.uint8)):
        assert foreground_mask(img).all()


def test_foreground_of_the_part_keeps_the_bore_out(part):
    fg = foreground_mask(part)
    assert 0.2 < fg.mean() < 0.6
    assert not fg[S // 2, S // 2]  # the bore shows the fixture
    assert not fg[:8].any() and not fg[:, :8].any()  # the fixture around the part
    assert fg[S // 2, S // 2 + int(0.3 * S)]  # the flange between bore and rim


# ----------------------------------------------------------------------------- defects


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_are_exact(family, part, grey_tile, noise):
    for img in (part, grey_tile, noise):
        before = img.copy()
        fg = foreground_mask(img)
        for seed in range(12):
            out, mask = synthetic_defect(img, np.random.default_rng(seed), family, SIZES[seed % 3], fg)
            assert np.array_equal(img, before), "input modified in place"
            assert out.shape == img.shape and out.dtype == np.uint8
            assert mask.shape == img.shape[:2] and mask.dtype == bool
            assert mask.any(), "a defect was made on an ordinary image"
            assert np.array_equal(out[~mask], img[~mask]), "a pixel outside the mask changed"
            assert (out[mask] != img[mask]).any(), "nothing changed inside the mask"


@pytest.mark.parametrize("family", FAMILIES)
def test_seeded(family, part):
    a = synthetic_defect(part, np.random.default_rng(7), family, (0.005, 0.02))
    b = synthetic_defect(part, np.random.default_rng(7), family, (0.005, 0.02))
    c = synthetic_defect(part, np.random.default_rng(8), family, (0.005, 0.02))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


# Mask area / requested range (lo, hi) that holds for each family, measured over many draws:
# the Perlin blobs reach the drawn area within a few percent (specks dropped, the level lowered
# to make up for them); CutPaste rounds its rectangle's sides; the scar its strip's sides,
# and its rotated edge adds or loses a few pixels.
AREA_TOLERANCE = {"perlin_texture": (0.9, 1.1), "perlin_patch": (0.9, 1.1), "matched": (0.9, 1.1),
                  "cutpaste": (0.95, 1.05), "scar": (0.75, 1.3)}


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_area_is_in_the_requested_range(family, part, grey_tile):
    low, high = AREA_TOLERANCE[family]
    for img in (part, grey_tile):
        fg = foreground_mask(img)
        for seed in range(30):
            lo, hi = SIZES[seed % 3]
            _, mask = synthetic_defect(img, np.random.default_rng(seed), family, (lo, hi), fg)
            assert low * lo <= mask.mean() <= high * hi, (seed, mask.mean(), lo, hi)


@pytest.mark.parametrize("family", ["perlin_texture", "perlin_patch", "matched"])
def test_perlin_defects_lie_on_the_part(family, part):
    fg = foreground_mask(part)
    for seed in range(20):
        _, mask = synthetic_defect(part, np.random.default_rng(seed), family, SIZES[seed % 3], fg)
        assert not (mask & ~fg).any()
        pieces = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
        assert 1 <= pieces <= 3  # one blob or a few


@pytest.mark.parametrize("family", ["cutpaste", "scar"])
def test_cutpaste_and_scar_are_placed_on_the_part(family, part):
    """They are centred well inside the foreground but may overhang it (documented)."""
    fg = foreground_mask(part)
    on_part = []
    for seed in range(40):
        _, mask = synthetic_defect(part, np.random.default_rng(seed), family, SIZES[seed % 3], fg)
        on_part.append((mask & fg).sum() / mask.sum())
    assert np.median(on_part) > 0.8 and min(on_part) > 0.3


def test_a_defect_that_cannot_change_anything_returns_an_empty_mask():
    black = np.zeros((64, 64, 3), np.uint8)  # colour jitter of black is black: CutPaste changes nothing
    out, mask = synthetic_defect(black, np.random.default_rng(0), "cutpaste", (0.01, 0.02))
    assert not mask.any() and np.array_equal(out, black) and out is not black


def test_bad_arguments_are_refused(part):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="family"):
        synthetic_defect(part, rng, "scratch", (0.01, 0.02))
    for area in [(0.0, 0.1), (0.2, 0.1), (0.1, 0.9)]:
        with pytest.raises(ValueError, match="area"):
            synthetic_defect(part, rng, "cutpaste", area)
    with pytest.raises(ValueError, match="uint8"):
        synthetic_defect(part.astype(np.float32), rng, "cutpaste", (0.01, 0.02))
    with pytest.raises(ValueError, match="foreground"):
        synthetic_defect(part, rng, "cutpaste", (0.01, 0.02), np.ones((10, 10), bool))


def test_defect_suite_cycles_families_and_sizes(part, grey_tile, noise):
    images = [part, grey_tile, noise] * 5
    suite = defect_suite(images, np.random.default_rng(0), per_image=1)
    assert len(suite) == 15 == 3 * len(FAMILIES)
    assert [i for i, *_ in suite] == list(range(15))
    assert [f for *_, f in suite] == [FAMILIES[k % len(FAMILIES)] for k in range(15)]
    assert {(f, k % 3) for k, (*_, f) in enumerate(suite)} == {(f, s) for f in FAMILIES for s in range(3)}, \
        "every (family, size) once; the areas are checked against SIZES[k % 3] below"
    for k, (i, out, mask, family) in enumerate(suite):
        img = images[i]
        assert np.array_equal(out[~mask], img[~mask]) and (out[mask] != img[mask]).any()
        lo, hi = SIZES[k % 3]
        low, high = AREA_TOLERANCE[family]
        assert low * lo <= mask.mean() <= high * hi
    again = defect_suite(images, np.random.default_rng(0), per_image=1)
    assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) for a, b in zip(suite, again))
    assert defect_suite(images, np.random.default_rng(0), per_image=0) == []


def test_perlin_noise_is_smooth_and_seeded():
    a = perlin_noise((64, 80), 16.0, np.random.default_rng(0), octaves=2)
    assert a.shape == (64, 80) and a.dtype == np.float32
    assert np.array_equal(a, perlin_noise((64, 80), 16.0, np.random.default_rng(0), octaves=2))
    assert -1.2 < a.min() < 0 < a.max() < 1.2 and a.std() > 0.1
    assert np.abs(np.diff(a, axis=1)).mean() < 0.1 * a.std() * 16  # neighbours are close: smooth


def test_cutpaste_centres_place_the_patch_and_leave_the_default_stream_alone(noise):
    centre = np.zeros((S, S), bool)
    centre[60, 200] = True
    _, mask = cutpaste(noise, np.random.default_rng(0), area_ratio=(0.01, 0.01), centres=centre)
    rows, cols = np.nonzero(mask)
    assert abs((rows.min() + rows.max()) / 2 - 60) <= 1 and abs((cols.min() + cols.max()) / 2 - 200) <= 1
    _, mask = cutpaste_scar(noise, np.random.default_rng(0), centres=centre)
    rows, cols = np.nonzero(mask)
    assert rows.min() <= 60 <= rows.max() and cols.min() <= 200 <= cols.max()
    for augment in (cutpaste, cutpaste_scar):
        a = augment(noise, np.random.default_rng(3))
        b = augment(noise, np.random.default_rng(3), centres=None)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# ----------------------------------------------------------------------------- nuisances


@pytest.mark.parametrize("kind", NUISANCES)
def test_every_nuisance_changes_the_image_a_little(kind, mid_grey, part):
    for img in (mid_grey, part):
        before = img.copy()
        for seed in range(10):
            out = apply_nuisance(img, kind, np.random.default_rng(seed))
            assert np.array_equal(img, before), "input modified in place"
            assert out.shape == img.shape and out.dtype == np.uint8
            assert not np.array_equal(out, img)
            rel = abs(out.mean() - img.mean()) / img.mean()
            if kind == "brightness":
                assert 0.03 <= rel <= 0.20
            elif kind == "contrast":  # around the mean: only clipping moves it
                assert rel <= 0.05
            elif kind == "gamma":  # 0.8 .. 1.25 moves mid grey by up to 16 %, dark pixels more
                assert rel <= 0.25
            elif kind in ("noise", "blur"):
                assert rel <= 0.02
            else:  # geometric: the part's share of the view changes a little
                assert rel <= 0.08


def test_nuisance_magnitudes(mid_grey):
    d = mid_grey.astype(np.float32)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        noisy = apply_nuisance(mid_grey, "noise", rng).astype(np.float32)
        assert 1.2 <= (noisy - d).std() <= 3.4  # sigma 1.5..3, plus rounding to grey levels
        assert np.array_equal(noisy[..., 0], noisy[..., 1]), "noise on a grey image stays grey"
        contrast = apply_nuisance(mid_grey, "contrast", rng).astype(np.float32)
        assert 0.03 <= abs(contrast.std() / d.std() - 1) <= 0.17
        blurred = apply_nuisance(mid_grey, "blur", rng)
        assert 0 < np.abs(blurred.astype(np.float32) - d).mean() < 5


@pytest.mark.parametrize("kind", ["shift", "rotation", "scale"])
def test_geometric_nuisances_leave_no_black_corners(kind, mid_grey):
    for seed in range(10):
        out = apply_nuisance(mid_grey, kind, np.random.default_rng(seed), strength=2.0)
        assert out.min() >= mid_grey.min() and out.max() <= mid_grey.max()
        for corner in (out[:4, :4], out[:4, -4:], out[-4:, :4], out[-4:, -4:]):
            assert corner.min() >= 100


@pytest.mark.parametrize("kind", NUISANCES)
def test_nuisances_are_seeded_and_strength_zero_is_identity(kind, part):
    a = apply_nuisance(part, kind, np.random.default_rng(5))
    assert np.array_equal(a, apply_nuisance(part, kind, np.random.default_rng(5)))
    assert np.array_equal(apply_nuisance(part, kind, np.random.default_rng(5), strength=0.0), part)


def test_bad_nuisances_are_refused(part):
    with pytest.raises(ValueError, match="nuisance"):
        apply_nuisance(part, "fog", np.random.default_rng(0))
    with pytest.raises(ValueError, match="strength"):
        apply_nuisance(part, "blur", np.random.default_rng(0), strength=-1)
    with pytest.raises(ValueError, match="uint8"):
        apply_nuisance(part[..., 0], "blur", np.random.default_rng(0))


def test_nuisance_suite_covers_every_kind_at_every_strength(part, mid_grey):
    images = [part, mid_grey, part, mid_grey]
    suite = nuisance_suite(images, np.random.default_rng(0), strengths=(0.5, 1.0))
    assert [i for i, *_ in suite] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [k for _, _, k, _ in suite] == list(NUISANCES)
    assert [g for *_, g in suite] == [0.5, 1.0] * 4
    for i, out, _, _ in suite:
        assert out.shape == images[i].shape and not np.array_equal(out, images[i])
    again = nuisance_suite(images, np.random.default_rng(0), strengths=(0.5, 1.0))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(suite, again))
    assert nuisance_suite(images, np.random.default_rng(0), per_strength=0) == []


def test_matched_defects_are_as_faint_as_the_part_is_plain():
    """A matched defect changes a plain part by a few of its own grey-level spreads, where the
    brightness-shifted patch changes it by 8 to 40 levels whatever the part."""
    rng = np.random.default_rng(0)
    plain = np.clip(120 + rng.normal(0, 1.5, (128, 128, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    matched, patch = [], []
    for seed in range(20):
        for family, out in (("matched", matched), ("perlin_patch", patch)):
            changed, mask = synthetic_defect(plain, np.random.default_rng(seed), family, (0.01, 0.02))
            out.append(np.abs(changed.astype(int) - plain)[mask].max())
    assert max(matched) <= 8 < np.median(patch), (matched, patch)
    assert min(matched) >= 1


