"""Synthetic MVTec-layout generator: layout, determinism, defect locality, variety."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from model.jobs import demo_data as synthetic
from model.jobs.demo_data import DEFECT_TYPES, KINDS, generate_category, render_sample

SIZE = 128
SMALL = dict(n_train=4, n_test_good=2, n_test_defect=8, size=SIZE)


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module", params=KINDS)
def category(request, tmp_path_factory) -> tuple[str, Path]:
    kind = request.param
    root = tmp_path_factory.mktemp(f"syn_{kind}")
    assert generate_category(root, kind=kind, seed=1, **SMALL) == root
    return kind, root


def test_layout(category):
    kind, root = category
    assert len(list((root / "train" / "good").glob("*.png"))) == 4
    assert len(list((root / "test" / "good").glob("*.png"))) == 2
    test_dirs = sorted(p.name for p in (root / "test").iterdir())
    assert test_dirs == sorted(["good", *DEFECT_TYPES])
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(DEFECT_TYPES)
    n_defect = 0
    for defect in DEFECT_TYPES:
        images = sorted((root / "test" / defect).glob("*.png"))
        masks = sorted((root / "ground_truth" / defect).glob("*.png"))
        assert len(images) == 2  # 8 defective images dealt over 4 types
        assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]
        for img_path, mask_path in zip(images, masks):
            img, mask = _read(img_path), _read(mask_path)
            assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
            assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
            assert set(np.unique(mask).tolist()) == {0, 255}
            area = (mask > 0).mean()
            assert 0 < area < 0.05  # a defect, not the whole image
        n_defect += len(images)
    assert n_defect == 8
    for p in (root / "train" / "good").glob("*.png"):
        assert _read(p).shape == (SIZE, SIZE, 3)


def test_files_are_the_rendered_samples(category):
    kind, root = category
    clean = render_sample(kind, SIZE, 1, "train", 3)[0]
    on_disk = cv2.cvtColor(_read(root / "train" / "good" / "003.png"), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(on_disk, clean)
    # defect image j = 5 is the second "dent" (5 % 4 == 1, 5 // 4 == 1)
    _, defective, mask = render_sample(kind, SIZE, 1, "test_defect", 5, "dent")
    np.testing.assert_array_equal(cv2.cvtColor(_read(root / "test" / "dent" / "001.png"), cv2.COLOR_BGR2RGB), defective)
    np.testing.assert_array_equal(_read(root / "ground_truth" / "dent" / "001_mask.png"), mask)


def test_deterministic(tmp_path):
    a = generate_category(tmp_path / "a", kind="parts", n_train=3, n_test_good=1, n_test_defect=4, size=SIZE, seed=7)
    b = generate_category(tmp_path / "b", kind="parts", n_train=3, n_test_good=1, n_test_defect=4, size=SIZE, seed=7)
    c = generate_category(tmp_path / "c", kind="parts", n_train=3, n_test_good=1, n_test_defect=4, size=SIZE, seed=8)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert fa["train/good/000.png"] != fc["train/good/000.png"]
    assert fa["ground_truth/scratch/000_mask.png"] != fc["ground_truth/scratch/000_mask.png"]


def test_regenerating_replaces_old_images(tmp_path):
    generate_category(tmp_path, kind="tiles", n_train=4, n_test_good=2, n_test_defect=8, size=64)
    (tmp_path / "README.txt").write_text("kept")
    generate_category(tmp_path, kind="tiles", n_train=2, n_test_good=1, n_test_defect=4, size=64)
    assert len(list((tmp_path / "train" / "good").glob("*.png"))) == 2
    assert len(list((tmp_path / "test" / "crack").glob("*.png"))) == 1
    assert len(list((tmp_path / "ground_truth" / "crack").glob("*.png"))) == 1
    assert (tmp_path / "README.txt").read_text() == "kept"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_defect_is_confined_to_its_mask(kind, defect):
    dilate = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))  # 2 px
    for index in range(3):
        clean, defective, mask = render_sample(kind, SIZE, 3, "test_defect", index, defect)
        again, _, _ = render_sample(kind, SIZE, 3, "test_defect", index)  # re-rendered without the defect
        np.testing.assert_array_equal(clean, again)
        changed = (clean != defective).any(axis=-1)
        inside = cv2.dilate(mask, dilate) > 0
        assert mask.any() and changed.any()
        assert not (changed & ~inside).any(), f"{kind}/{defect}/{index}: pixels changed outside the mask"
        assert changed[mask > 0].mean() > 0.5  # the mask is not much larger than the change
        diff = np.abs(clean.astype(np.int16) - defective.astype(np.int16)).max()
        assert 15 <= diff <= 150  # visible, but not a saturated blob


def test_clean_sample_has_no_defect():
    clean, defective, mask = render_sample("tiles", SIZE, 0, "test_good", 0)
    np.testing.assert_array_equal(clean, defective)
    assert not mask.any()


@pytest.mark.parametrize("kind", KINDS)
def test_train_images_vary(kind):
    imgs = [render_sample(kind, SIZE, 0, "train", i)[0].astype(np.float32) for i in range(4)]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 2.0
    # ... but they show the same kind of surface / part: similar global brightness
    means = [im.mean() for im in imgs]
    assert max(means) - min(means) < 20.0


def test_parts_have_a_bright_part_on_a_dark_background():
    img = render_sample("parts", SIZE, 0, "train", 0)[0].astype(np.float32).mean(axis=-1)
    c = SIZE // 2
    assert img[:8, :8].mean() < 60  # corner: the fixture
    ring = img[c - 2 : c + 3, int(c + 0.33 * SIZE) - 2 : int(c + 0.33 * SIZE) + 3]  # between bolt holes and rim
    assert ring.mean() > 100


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_category(tmp_path, kind="wood")
    with pytest.raises(ValueError):
        generate_category(tmp_path, size=16)
    with pytest.raises(ValueError):
        render_sample("tiles", SIZE, 0, "test_defect", 0, "burn")
    with pytest.raises(ValueError):
        render_sample("tiles", SIZE, 0, "validation", 0)


def test_style_is_shared_within_a_category():
    assert synthetic.make_style("tiles", 4) == synthetic.make_style("tiles", 4)
    assert synthetic.make_style("tiles", 4) != synthetic.make_style("tiles", 5)
