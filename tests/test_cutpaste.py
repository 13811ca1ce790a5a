"""CutPaste / CutPaste-Scar: changes stay inside the pasted region, sizes follow the paper."""

from __future__ import annotations

import numpy as np
import pytest

from model.training.cutpaste import CUTPASTE, NORMAL, SCAR, color_jitter, cutpaste, cutpaste_scar, pseudo_views
from model.runtime.imageio import read_image, resize_rgb
from tests.conftest import shared_category


@pytest.fixture(scope="module")
def bottle() -> np.ndarray:
    folder = shared_category("mvtec_ad", "bottle", "train", "good")
    return resize_rgb(read_image(str(folder / "000.png")), 256)


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)


@pytest.mark.parametrize("augment", [cutpaste, cutpaste_scar])
@pytest.mark.parametrize("seed", range(20))
def test_changes_only_inside_the_mask(augment, seed, bottle, noise):
    for image in (bottle, noise):
        before = image.copy()
        out, mask = augment(image, np.random.default_rng(seed))
        assert np.array_equal(image, before), "input was modified in place"
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.any()
        assert np.array_equal(out[~mask], image[~mask])
        if image is noise:  # a patch from elsewhere of white noise differs almost everywhere
            assert (out[mask] != image[mask]).any(axis=-1).mean() > 0.9


def test_cutpaste_area_and_aspect(noise):
    areas, aspects = [], []
    for seed in range(200):
        _, mask = cutpaste(noise, np.random.default_rng(seed))
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert mask.sum() == h * w, "a CutPaste patch is an axis-aligned rectangle"
        areas.append(mask.mean())
        aspects.append(h / w)
    assert 0.018 <= min(areas) and max(areas) <= 0.16
    assert min(aspects) < 0.5 and max(aspects) > 2  # both orientations occur
    assert 0.28 <= min(aspects) and max(aspects) <= 3.6


def test_scar_is_thin_and_rotated(noise):
    saw_rotated = False
    for seed in range(100):
        _, mask = cutpaste_scar(noise, np.random.default_rng(seed))
        assert 2 <= mask.sum() <= 16 * 25 + 60  # the strip's area, plus rounding at its rotated edges
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        saw_rotated |= mask.sum() < 0.8 * (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    assert saw_rotated


def test_seeded_and_varied(bottle):
    a = cutpaste(bottle, np.random.default_rng(3))
    b = cutpaste(bottle, np.random.default_rng(3))
    c = cutpaste(bottle, np.random.default_rng(4))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_color_jitter_is_bounded(bottle):
    patch = bottle[100:140, 100:140]
    out = color_jitter(patch, np.random.default_rng(0))
    assert out.shape == patch.shape
    assert 0 < np.abs(out.astype(int) - patch).mean() < 60


def test_pseudo_views_labels(bottle):
    views = pseudo_views(bottle, np.random.default_rng(0))
    assert [label for _, label, _ in views] == [NORMAL, CUTPASTE, SCAR]
    assert views[0][0] is bottle and not views[0][2].any()
    for view, _, mask in views[1:]:
        assert mask.any() and not np.array_equal(view, bottle)
        assert np.array_equal(view[~mask], bottle[~mask])
