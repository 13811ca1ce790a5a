"""The fit's validation images described once: the validate stage's recording, the head's
pool taken from it, and the images the pool is dealt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.jobs.dataset import list_defects, list_images, read_mask
from model.jobs.fit import fit
from model.reporting.progress import silent_progress
from model.jobs.variant import fit_parts
from model.runtime.execution import Timer
from model.runtime.imageio import read_image, resize_rgb
from model.runtime.inspector import Inspector
from model.training.described import Recording, describe
from model.training.head_cells import completed, roles
from model.training.head_fit import fit_head
from model.training.synthetic_defects import FAMILIES
from model.training.validation import score_candidates
from model.training.validation_images import validation_images
from tests.conftest import tiny_config

AUTO = {"psg.enabled": False, "selection.min_holdout": 4, "calibration.holdout_fraction": 0.3}


@pytest.fixture(scope="module")
def parts(tiny_data):
    config = tiny_config(**AUTO)
    files = list_images(tiny_data / "train" / "good")
    return config, fit_parts(config, files[:8], "cpu", silent_progress, Timer(torch.device("cpu")), True, True), files


@pytest.fixture(scope="module")
def goods(tiny_data, parts):
    config, _, files = parts
    return [resize_rgb(read_image(str(f)), config.image_size) for f in files[8:]]


def test_every_part_of_the_pool_gets_every_family():
    families = [FAMILIES[i % len(FAMILIES)] for i in range(30)] + [None] * 3  # 3 goods without a defect
    part_a, part_c, half_b = roles(families)
    assert sorted(part_a + part_c + half_b) == list(range(33))
    for part in (part_a, half_b):
        assert {families[i] for i in part} >= set(FAMILIES)
    assert 3 <= len(part_c) <= 5 and len(half_b) == 16
    assert roles([None, None]) == ([], [0], [1])  # part C is never empty


def test_good_images_are_those_without_any_mask(parts, goods):
    config, fitted, _ = parts
    inspector = fitted.variant(config.with_scoring("product"), Timer(torch.device("cpu"))).inspector("cpu")
    size = config.image_size
    big, tiny = np.zeros((size, size), bool), np.zeros((size, size), bool)
    big[8:40, 8:40], tiny[5, 5] = True, True  # tiny: no cell half covered, one border cell
    cells = describe(inspector, goods[:4], [None, big, tiny, np.zeros((size, size), bool)])
    assert cells.good_images().tolist() == [False, False, False, True]  # no mask / a defect / a small one / good
    assert describe(inspector, goods[:2]).good_images().all()


def test_a_subset_keeps_its_goods_images_and_says_where_they_are(goods):
    config = tiny_config(**{"selection.max_images": 2})
    made = validation_images(goods, config)
    extra = validation_images(goods[2:], config)
    every = made.extended(extra, 2)
    assert every.defect_sources == [0, 1, 2, 3] and every.nuisance_sources == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert every.nuisance_strengths == [0.25, 0.5, 1.0] * 4
    subset, (at_goods, at_defects, at_nuisance) = every.subset([3, 1])
    assert subset.defect_sources == [1, 0] and subset.nuisance_sources == [1, 1, 1, 0, 0, 0]
    assert subset.nuisance_strengths == [0.25, 0.5, 1.0] * 2
    for image, i in zip([*subset.goods, *subset.defects, *subset.nuisance], at_goods + at_defects + at_nuisance,
                        strict=True):
        assert image is every.all[i]
    assert np.array_equal(subset.defect_masks[0], every.defect_masks[1])
    assert every.subset([3, 1], nuisance=False)[0].nuisance == []


def test_spans_say_where_each_kind_of_image_is_in_all(goods):
    config = tiny_config(**{"selection.max_images": 2})
    made = validation_images(goods[:3], config, labelled=goods[3:5])
    kinds = (made.goods, made.defects, made.nuisance, made.labelled)
    spans = made.spans()
    assert [len(s) for s in spans] == [len(k) for k in kinds] and spans[-1].stop == len(made.all)
    for span, images in zip(spans, kinds, strict=True):
        assert all(made.all[i] is image for i, image in zip(span, images, strict=True))


def test_the_recording_equals_describing_and_leaves_the_scores_unchanged(parts, goods):
    config, fitted, _ = parts
    watch = Timer(torch.device("cpu"))
    inspectors = {n: fitted.variant(config.with_scoring(n), watch).inspector("cpu")
                  for n in ("product", "product_shift5", "nns")}
    plain = score_candidates(inspectors, goods, 3)
    for name in inspectors:
        recording = Recording(fitted.features, fitted.bank)
        recorded = score_candidates(inspectors, goods, 3, recording)
        assert all(np.array_equal(plain[n][1], recorded[n][1]) for n in inspectors)
        variant = fitted.variant(config.with_scoring(name), watch)
        cells = recording.take(name, variant.features, variant.bank)
        fresh = describe(inspectors[name], goods)
        for a, b in zip(cells.__dict__.values(), fresh.__dict__.values(), strict=True):
            assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5)
        assert recording.take(name, variant.features, variant.bank) is None  # handed over once
    recording = Recording(fitted.features, fitted.bank)
    score_candidates(inspectors, goods, 3, recording)
    other = fitted.variant(config.with_scoring("product_shift2"), watch)  # a Gaussian no candidate had
    assert recording.take("product_shift2", other.features, other.bank) is None
    score_candidates(inspectors, goods, 3, recording)
    assert recording.take("product", fitted.features, None) is None


def test_recorded_images_are_not_described_again(parts, goods, monkeypatch):
    import model.training.described as described

    config, fitted, _ = parts
    inspector = fitted.variant(config.with_scoring("product"), Timer(torch.device("cpu"))).inspector("cpu")
    config = config.with_overrides({"selection.max_images": 2})
    made = validation_images(goods, config)
    recorded = describe(inspector, made.all)
    asked = []
    real = described.describe
    monkeypatch.setattr(described, "describe", lambda i, images, *a: asked.append(len(images)) or real(i, images, *a))
    every, cells = completed(inspector, made, recorded, config, nuisance=True)
    got = cells(range(len(every.all)), None)
    assert asked == [len(every.all) - len(made.all)]  # only the images made for the goods beyond max_images
    fresh = describe(inspector, every.all)
    assert torch.allclose(got.distance, fresh.distance, atol=1e-5) and torch.allclose(got.gaussian, fresh.gaussian)


def test_the_head_from_the_validate_stages_description_equals_describing_anew(tiny_data, tmp_path):
    defects = list_defects(tiny_data)[::2]
    config = tiny_config(**AUTO, **{"selection.max_images": 3, "head.weights": [0, 1, 2]})
    report = fit(tiny_data, "tiles", tmp_path, config, defects=defects)
    assert report.head["validation_described_by"] == "the validate stage"
    inspector = Inspector.from_artifact(report.artifact)
    config = inspector.config
    goods = [resize_rgb(read_image(str(tiny_data / "train" / "good" / f)), config.image_size)
             for f in inspector.manifest.training.holdout_files]
    shots = [resize_rgb(read_image(str(d.path)), config.image_size) for d in defects]
    masks = [read_mask(d, config.image_size) for d in defects]
    made = validation_images(goods, config, shots)
    types = [d.defect for d in defects]
    _, fresh = fit_head(inspector, made, masks, types, config)
    _, recorded = fit_head(inspector, made, masks, types, config, describe(inspector, made.all))
    assert fresh["validation_described_by"] == "this stage"
    for w, row in fresh["candidates"].items():
        for key in ("image_auroc", "pixel_auroc", "au_pro"):
            assert recorded["candidates"][w][key] == pytest.approx(row[key], abs=1e-4)
        assert recorded["candidates"][w]["nuisance_far"] == pytest.approx(row["nuisance_far"], abs=1e-4)
