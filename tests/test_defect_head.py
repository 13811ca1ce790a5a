"""The defect head (issue 17): abnormal bank, per-cell inputs, training, the weight chosen on
held-out labelled defects, the artifact, server parity and bad input."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.artifact.store import load_artifact
from model.jobs.dataset import list_defects
from model.jobs.evaluate import evaluate
from model.jobs.fit import fit
from model.method.amc import AnomalyMapCombiner
from model.method.config import FitConfig
from model.method.defect_head import FLOOR, DefectHead, cell_inputs, input_channels, nearest_abnormal, principal_basis
from model.method.memory_bank import MemoryBank
from model.runtime.imageio import read_image
from model.runtime.inspector import Inspector
from model.training.described import Cells
from model.training.head_cells import abnormal_bank, input_chunks, paste_defects
from model.training.head_fit import candidate, candidates, folds
from model.training.validation_images import ValidationImages
from service.app import create_app
from service.settings import Settings
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def defects(tiny_data):
    return list_defects(tiny_data)[::2]


@pytest.fixture(scope="module")
def chosen(tiny_data, tmp_path_factory, defects):
    """The default: the weight chosen on held-out shots."""
    return fit(tiny_data, "tiles", tmp_path_factory.mktemp("chosen"), tiny_config(**{"psg.enabled": False}),
               defects=defects)


@pytest.fixture(scope="module")
def with_head(tiny_data, tmp_path_factory, defects):
    """One configured weight: the head is always stored."""
    return fit(tiny_data, "tiles", tmp_path_factory.mktemp("head"),
               tiny_config(**{"psg.enabled": False, "head.weights": [2.0]}), defects=defects)


def test_memory_bank_search_gives_the_nearest_vector_and_the_same_distance():
    gen = torch.Generator().manual_seed(0)
    bank, feats = torch.randn(37, 6, generator=gen), torch.randn(2, 6, 5, 7, generator=gen)
    mb = MemoryBank(bank, chunk=4)
    d, nearest = mb.search(feats)
    q = feats.permute(0, 2, 3, 1).reshape(-1, 6)
    ref = bank[torch.cdist(q, bank).argmin(1)].view(2, 5, 7, 6).permute(0, 3, 1, 2)
    assert torch.equal(nearest, ref) and torch.allclose(d, mb(feats))


def test_nearest_abnormal_skips_excluded_rows_and_handles_an_empty_bank():
    bank = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    q = torch.tensor([[1.0, 0.0], [9.0, 0.0]])
    d, r = nearest_abnormal(q, bank)
    assert torch.allclose(d, torch.tensor([1.0, 1.0])) and torch.allclose(r, torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    d, r = nearest_abnormal(q, bank, torch.tensor([[True, False], [True, False]]))
    assert torch.allclose(d, torch.tensor([9.0, 1.0]))
    d, r = nearest_abnormal(q, bank, torch.ones(2, 2, dtype=torch.bool))
    assert torch.all(d == 1e3) and torch.all(r == 0)
    d, _ = nearest_abnormal(q, torch.zeros(0, 2))
    assert torch.all(d == 1e3)


def test_a_shot_is_compared_with_the_other_shots_cells_only():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 4, 4, generator=gen)
    shots = Cells(feats, torch.zeros_like(feats), torch.ones(2, 4, 4), None, torch.zeros(2, 4, 4),
                  torch.ones(2, 4, 4), torch.zeros(2), torch.tensor([0, 1]))
    masks = [np.ones((16, 16), bool), np.ones((16, 16), bool)]
    bank, owner = abnormal_bank(shots, masks, 0.75, 256)
    assert bank.shape == (32, 3) and owner.tolist() == [0] * 16 + [1] * 16
    x = torch.cat(list(input_chunks(shots, bank, owner)))
    assert x.shape == (2, input_channels(3), 4, 4)
    own_distance = x[0, 2].exp() - FLOOR  # log distance to the abnormal bank, shot 0's cells
    other = torch.cdist(feats[0].flatten(1).T, feats[1].flatten(1).T).min(1).values.view(4, 4)
    assert torch.allclose(own_distance, other, atol=1e-4)  # never 0: its own cells are left out


def test_the_inputs_statistics_and_projection_come_from_one_pass_in_chunks():
    from model.training.head_fit import _projection

    gen = torch.Generator().manual_seed(0)
    n, c = 40, 3  # three chunks of inputs
    feats = torch.randn(n, c, 4, 4, generator=gen)
    target = (torch.rand(n, 4, 4, generator=gen) < 0.1).float()
    cells = Cells(feats, feats + 0.1 * torch.randn(n, c, 4, 4, generator=gen), torch.ones(n, 4, 4), None, target,
                  torch.ones(n, 4, 4), torch.zeros(n), torch.tensor([0, 1] + [-1] * (n - 2)))
    bank, owner = torch.randn(6, c, generator=gen), torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.cat(list(input_chunks(cells, bank, owner)))
    mean, std, basis = _projection(cells, bank, owner, 5, 0)
    assert torch.allclose(mean, x.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(std, x.std((0, 2, 3)) + 1e-6, rtol=1e-4)
    rows = (x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) - mean) / std  # every cell: fewer than the sample
    full = principal_basis(rows, target.flatten() > 0, 5)
    assert torch.allclose((basis @ full.T).abs().diagonal(), torch.ones(5), atol=1e-3)  # the same directions


def test_only_cells_mostly_inside_a_mask_join_the_abnormal_bank():
    feats = torch.randn(1, 3, 4, 4)
    shots = Cells(feats, feats, torch.ones(1, 4, 4), None, torch.zeros(1, 4, 4), torch.ones(1, 4, 4),
                  torch.zeros(1), torch.tensor([0]))
    mask = np.zeros((16, 16), bool)
    mask[0:4, 0:4] = True  # one whole cell
    mask[4:6, 4:8] = True  # half a cell
    bank, _ = abnormal_bank(shots, [mask], 0.75, 256)
    assert bank.shape[0] == 1 and torch.equal(bank[0], feats[0, :, 0, 0])
    assert abnormal_bank(shots, [None], 0.75, 256)[0].shape == (0, 3)
    thin = np.zeros((16, 16), bool)
    thin[5, 4:8] = True  # a crack: a quarter of one cell
    bank, _ = abnormal_bank(shots, [thin], 0.75, 256)
    assert bank.shape[0] == 1 and torch.equal(bank[0], feats[0, :, 1, 1])


def test_a_large_defect_gives_a_coreset_of_its_cells_with_their_owners():
    feats = torch.randn(2, 3, 8, 8)
    shots = Cells(feats, feats, torch.ones(2, 8, 8), None, torch.zeros(2, 8, 8), torch.ones(2, 8, 8),
                  torch.zeros(2), torch.tensor([0, 1]))
    everywhere = np.ones((16, 16), bool)
    bank, owner = abnormal_bank(shots, [everywhere, everywhere], 0.75, 10)
    cells = feats.permute(0, 2, 3, 1).reshape(-1, 3)
    rows = [int(torch.nonzero((cells == b).all(1))[0]) for b in bank]
    assert bank.shape == (10, 3) and len(set(rows)) == 10
    assert owner.tolist() == [r // 64 for r in rows]  # each kept cell keeps its shot


def test_head_round_trips_through_its_tensors_and_boost_zero_is_the_unsupervised_map():
    torch.manual_seed(0)
    c = 5
    d = input_channels(c)
    head = DefectHead(torch.randn(7, c), torch.zeros(d), torch.ones(d), torch.randn(4, d), 8, 3, 2.0, 0.25)
    again = DefectHead.from_tensors({k: v.clone() for k, v in head.tensors().items()})
    args = (torch.randn(2, c, 6, 6), torch.randn(2, c, 6, 6), torch.rand(2, 12, 12) + 0.1)
    p = head(*args)
    assert torch.equal(p, again(*args)) and float(again.weight) == 2.0 and float(again.offset) == 0.25
    assert ((p >= 0) & (p <= 1)).all()
    assert again.net[-1].out_channels == 3 and again.net[0].out_channels == 3 * 8  # three members of 8
    amc = AnomalyMapCombiner(48, 4.0)
    maps = [torch.rand(2, 6, 6), torch.rand(2, 12, 12)]
    assert torch.equal(amc(maps, torch.zeros(2, 6, 6)), amc(maps))
    assert torch.all(amc(maps, p) >= amc(maps) - 1e-6)
    assert torch.equal(amc.boosted(amc(maps), p), amc(maps, p))  # the weight table boosts one plain map


def test_the_boost_is_the_probability_above_the_level_on_good_parts(monkeypatch):
    from model.training.head_fit import good_level

    head = DefectHead(torch.zeros(1, 3), torch.zeros(13), torch.ones(13), torch.eye(13), 2, offset=0.6)
    p = torch.tensor([0.0, 0.3, 0.6, 0.8, 1.0])
    assert torch.allclose(head.excess(p), torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0]))
    tops = torch.linspace(0.05, 0.95, 100)  # each good image's highest probability
    probability = tops.view(100, 1, 1) * torch.tensor([[1.0, 0.5], [0.2, 0.1]])
    monkeypatch.setattr(head, "probability_of", lambda *a: probability)
    goods = _marked_cells([0.0] * 100)
    config = tiny_config(**{"calibration.image_false_alarm_rate": 0.05})
    level = good_level(head, goods, config)
    assert level >= float(tops[95])  # at least the higher 95 % quantile of the maxima
    head.offset.fill_(level)
    boosted = head.excess(probability).flatten(1).amax(1) > 0
    assert 1 <= boosted.sum() <= 5 and boosted[-int(boosted.sum()):].all()  # silent on all but a few good parts
    few = torch.tensor([0.10, 0.12, 0.15, 0.2, 0.3])  # five goods: their maximum is no 95 % quantile
    monkeypatch.setattr(head, "probability_of", lambda *a: few.view(5, 1, 1))
    logit = torch.logit(few.double())
    fitted = float(torch.sigmoid(logit.mean() + 1.6448536 * logit.std()))
    assert good_level(head, _marked_cells([0.0] * 5), config) == pytest.approx(fitted) and fitted > 0.3
    monkeypatch.setattr(head, "probability_of", lambda *a: few[:1].view(1, 1, 1))
    assert good_level(head, _marked_cells([0.0]), config) == pytest.approx(0.10)  # one good: its own


def test_pasted_defects_carry_the_shots_region_and_mask():
    rng = np.random.default_rng(0)
    goods = [np.zeros((32, 32, 3), np.uint8)] * 3
    shot = np.full((32, 32, 3), 200, np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[3:9, 5:8] = True
    images, masks, sources = paste_defects(goods, [shot, shot], [mask, None], 5, rng)
    assert len(images) == 5 and sources == [0] * 5
    for image, m in zip(images, masks, strict=True):
        assert m.sum() == mask.sum() and (image[m] == 200).all() and (image[~m] == 0).all()
    assert paste_defects(goods, [shot], [None], 5, rng) == ([], [], [])
    images, masks, sources = paste_defects(goods, [shot, shot], [None, mask], 4, rng, copies=2)
    assert sources == [1] * 4
    for image, m in zip(images, masks, strict=True):  # two copies, which may overlap
        assert mask.sum() <= m.sum() <= 2 * mask.sum() and (image[m] == 200).all() and (image[~m] == 0).all()
    assert any(m.sum() > mask.sum() for m in masks)


def test_the_projection_keeps_the_direction_that_sets_rare_defect_cells_apart():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 6, generator=gen) * torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.1])
    positive = torch.zeros(2000, dtype=torch.bool)
    positive[:20] = True
    x[:20, 5] += 8.0  # 1 % of the cells differ along the normal cells' weakest direction
    basis = principal_basis(x, positive, 2)
    assert basis.shape == (2, 6) and torch.allclose(basis @ basis.T, torch.eye(2), atol=1e-5)
    assert abs(float(basis[0, 5])) > 0.9  # a plain PCA would keep the two strongest directions



def test_folds_deal_each_type_round_robin():
    assert folds(["a", "a", "b", "b", "c"], 2) == [[0, 2, 4], [1, 3]]
    assert folds(["a", "b"], 2) == [[0], [1]]
    assert folds(["a"], 2) == [[0]]


def _marked_cells(marks: list[float], owners: list[int] | None = None) -> Cells:
    """One 2x2 image per mark, every feature equal to it."""
    n = len(marks)
    feats = torch.tensor(marks).view(n, 1, 1, 1).expand(n, 3, 2, 2).clone()
    return Cells(feats, feats, torch.ones(n, 2, 2), None, torch.zeros(n, 2, 2), torch.ones(n, 2, 2), torch.zeros(n),
                 torch.tensor(owners if owners is not None else [-1] * n))


def test_each_folds_head_is_gated_on_the_synthetic_families_it_never_trained_on(monkeypatch):
    import model.training.head_fit as head_fit
    from model.training.head_cells import Pool
    from model.training.synthetic_defects import FAMILIES

    families = [None, None, *FAMILIES, *FAMILIES]  # two goods, then two defects of each family
    marks = [-1.0, -1.0, *[float(FAMILIES.index(f)) for f in families[2:]]]
    made = ValidationImages([], [], np.zeros((0, 8, 8), bool), [], [], [], [], [], [])
    pool = Pool(_marked_cells(marks), _marked_cells([-1.0]), families, None, torch.zeros(0, dtype=torch.long), made, [])
    shots = _marked_cells([10.0, 11.0], [0, 1])
    trained, gated, sizes = [], [], []
    head = DefectHead(torch.zeros(1, 3), torch.zeros(13), torch.ones(13), torch.eye(13), 2)

    def train(cells, bank, owner, config, steps, goods):
        sizes.append((config.head.members, steps))
        return trained.append(cells.features[:, 0, 0, 0].tolist()) or head, {}

    monkeypatch.setattr(head_fit, "train", train)
    monkeypatch.setattr(head_fit, "weight_table", lambda *a, leave_out: gated.append(leave_out) or {})
    bank, owner = torch.zeros(2, 3), torch.tensor([0, 1])
    head_fit.cross_fit(None, pool, shots, [np.zeros((8, 8, 3), np.uint8)] * 2, [np.ones((8, 8), bool)] * 2,
                       bank, owner, [[0], [1]], tiny_config(**{"head.fold_members": 2, "head.fold_steps": 7}))
    assert sizes == [(2, 7)] * 2  # the cross-fitting heads' own size and steps, not the published head's
    assert len(trained) == len(gated) == 2 and set(gated[0]) | set(gated[1]) == set(FAMILIES)
    for marks_seen, left_out, shot in zip(trained, gated, (11.0, 10.0), strict=True):
        seen = {FAMILIES[int(m)] for m in marks_seen if 0 <= m < len(FAMILIES)}
        assert seen == set(left_out) and marks_seen.count(-1.0) == 2 and marks_seen[-1] == shot
    assert not set(gated[0]) & set(gated[1])


def test_a_small_category_trains_and_pastes_in_proportion_to_its_goods(monkeypatch):
    import model.training.head_cells as head_cells
    from model.training.head_fit import train

    cells = _marked_cells([float(i) for i in range(10)])
    config = tiny_config(**{"head.epochs": 6, "head.batch_size": 4, "head.components": 3})
    bank, owner = torch.zeros(1, 3), torch.tensor([0])
    assert train(cells, bank, owner, config, 400, cells)[1]["steps"] == 15  # 6 passes over 10 images, 4 a step
    assert train(cells, bank, owner, config, 9, cells)[1]["steps"] == 9  # fewer steps asked: those

    asked = []
    monkeypatch.setattr(head_cells, "describe", lambda inspector, images, *a, **k: _marked_cells([0.0] * len(images)))
    monkeypatch.setattr(head_cells, "paste_defects",
                        lambda goods, shots, masks, n, rng, copies: asked.append((len(goods), n)) or ([], [], []))
    goods = [np.zeros((64, 64, 3), np.uint8)] * 12  # half of them, 6: one sets the level, 5 are part A
    made = ValidationImages(goods, [], np.zeros((0, 64, 64), bool), [], [], [], [], [], [])
    for pasted, expected in ((100, 15), (8, 8)):
        head_cells.describe_pool(None, made, lambda index, *a: _marked_cells([0.0] * len(index)), [],
                                 tiny_config(**{"head.pasted": pasted, "head.pasted_per_good": 3}), validate=False)
        assert asked.pop() == (5, expected)


def test_the_weight_is_chosen_on_held_out_shots_and_a_zero_weight_stores_no_head(chosen, defects):
    m = json.loads((chosen.artifact / "manifest.json").read_text())
    record = m["fit"]["head"]
    assert list(record["candidates"]) == ["0.0", "1.0", "2.0", "4.0", "1.0/none", "2.0/none", "4.0/none"]
    assert record["chosen"] in record["candidates"] and len(record["folds"]) == 2
    weight, level = candidate(record["chosen"])
    assert record["weight"] == weight and record["level"] == (level if weight > 0 else None)
    assert sorted(i for f in record["folds"] for i in f) == list(range(len(defects)))
    for row in record["candidates"].values():
        assert len(row["folds"]) == 2 and all(f["labelled"]["au_pro"] is not None for f in row["folds"])
        assert row["sensitivity"] == pytest.approx(np.mean([f["sensitivity"] for f in row["folds"]]))
    assert record["abnormal_bank"] > 0 and "head" in m["fit"]["seconds"]
    assert m["fit"]["selection"]["mode"] == "fallback"  # 3 held-out goods: no validate stage to describe them
    assert record["validation_described_by"] == "this stage"
    tensors = load_artifact(chosen.artifact).tensors
    assert ("defect_head" in tensors) == (record["weight"] > 0) == m["config"]["head"]["enabled"]
    if record["weight"] > 0:
        assert float(tensors["defect_head"]["offset"]) == (0.0 if level == "none" else record["training"]["level"])


def test_a_stored_head_carries_its_weight_and_abnormal_bank(with_head):
    m = json.loads((with_head.artifact / "manifest.json").read_text())
    record = m["fit"]["head"]
    assert m["config"]["head"]["enabled"] is True and record["weight"] == 2.0 and "without validation" in record["note"]
    tensors = load_artifact(with_head.artifact).tensors["defect_head"]
    assert float(tensors["weight"]) == 2.0 and tensors["abnormal"].shape[0] == record["abnormal_bank"] > 0
    level = float(tensors["offset"])
    assert 0 <= level < 1 and level == pytest.approx(record["training"]["level"])
    assert any(name.startswith("defect_head") for name in m["files"])


def test_the_head_changes_the_map_when_its_weight_is_on(with_head, tiny_data):
    inspector = Inspector.from_artifact(with_head.artifact)
    head = inspector.head
    head.weight.fill_(2.0)
    # the wiring, not what this 20-step head learned: p = 0.5 on every cell, no level, so the
    # boost is 0.5 everywhere and the map doubles
    with torch.no_grad():
        head.net[-1].weight.zero_()
        head.net[-1].bias.zero_()
    head.offset.fill_(0.0)
    image = read_image(str(next((tiny_data / "test").rglob("*.png"))))
    boosted = inspector.measure([image])[1]
    head.weight.fill_(0.0)
    plain = inspector.measure([image])[1]
    assert np.allclose(boosted, 2 * plain, rtol=1e-4)


def test_served_score_equals_evaluate_with_the_head(with_head, tiny_data, defects):
    inspector = Inspector.from_artifact(with_head.artifact)
    report = evaluate(inspector, tiny_data)
    assert report["n_excluded"] == len(defects)
    expected = {item["file"]: item["score"] for item in report["images"]}
    app = create_app(Settings(artifacts=with_head.artifact.parent, torch_threads=1))
    with TestClient(app) as client:
        for file, score in list(expected.items())[:4]:
            data = open(file, "rb").read()
            r = client.post("/inspect/tiles", files={"file": ("x.png", data, "image/png")})
            assert r.status_code == 200, r.text
            assert abs(r.json()["score"] - score) <= 1e-4
        detail = client.get("/categories/tiles").json()["manifest"]["defect_head"]
    assert detail["weight"] == inspector.manifest.fit.head["weight"] == 2.0
    assert detail["level"] == "goods"  # a single weight: the first of head.levels, without validation
    assert detail["shots"]["n"] == len(defects) and len(detail["shots"]["sha256"]) == len(defects)


def test_head_off_and_head_on_without_defects(tiny_data, tmp_path, defects):
    off = fit(tiny_data, "off", tmp_path, tiny_config(**{"psg.enabled": False, "head.enabled": False}), defects=defects)
    assert "defect_head" not in load_artifact(off.artifact).tensors and off.head is None
    plain = fit(tiny_data, "plain", tmp_path, tiny_config(**{"psg.enabled": False}))
    manifest = json.loads((plain.artifact / "manifest.json").read_text())
    assert plain.head is None and manifest["config"]["head"]["enabled"] is False
    with pytest.raises(ValueError, match="head.enabled=true needs labelled defects"):
        fit(tiny_data, "on", tmp_path, tiny_config(**{"head.enabled": True}))


def test_defects_without_masks_train_the_head_at_image_level(tiny_data, tmp_path):
    nomasks = tmp_path / "nomasks"
    shutil.copytree(tiny_data / "test", nomasks / "test")
    shots = list_defects(nomasks)[::2]
    assert all(d.mask_path is None for d in shots)
    report = fit(tiny_data, "imagelevel", tmp_path / "arts", tiny_config(**{"psg.enabled": False}), defects=shots)
    assert report.head["candidates"]
    record = report.head
    real = [fold["labelled"] for fold in record["candidates"]["0.0"]["folds"]]
    assert record["abnormal_bank"] == 0 and real and all(r["pixel_auroc"] is None for r in real)
    assert all(r["image_auroc"] is not None for r in real)
    assert evaluate(Inspector.from_artifact(report.artifact), tiny_data)["n_excluded"] == len(shots)


def _defects_copy(tiny_data, tmp_path):
    root = tmp_path / "shots"
    shutil.copytree(tiny_data / "test", root / "test")
    shutil.copytree(tiny_data / "ground_truth", root / "ground_truth")
    shutil.rmtree(root / "test" / "good")
    return root


def test_a_mask_of_another_size_or_an_empty_mask_is_refused_naming_the_file(tiny_data, tmp_path):
    root = _defects_copy(tiny_data, tmp_path)
    shots = list_defects(root)
    target = shots[0].mask_path
    cv2.imwrite(str(target), np.full((10, 12), 255, np.uint8))
    with pytest.raises(ValueError, match=rf"{target.name}.*12x10 but its image"):
        fit(tiny_data, "bad", tmp_path / "arts", tiny_config(), defects=shots)
    cv2.imwrite(str(target), np.zeros(read_image(str(shots[0].path)).shape[:2], np.uint8))
    with pytest.raises(ValueError, match=rf"{target.name}: the mask is empty"):
        fit(tiny_data, "bad", tmp_path / "arts", tiny_config(), defects=shots)
    assert not (tmp_path / "arts" / "bad").exists()


def test_a_defects_folder_of_the_wrong_layout_is_refused(tmp_path, tiny_data):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(next((tiny_data / "test").rglob("*.png")), flat / "a.png")
    with pytest.raises(FileNotFoundError, match="no test folder"):
        list_defects(flat)
    root = _defects_copy(tiny_data, tmp_path)
    victim = list_defects(root)[0]
    victim.mask_path.unlink()
    with pytest.raises(FileNotFoundError, match=victim.mask_path.name):
        list_defects(root)


def test_onnx_runtime_scores_equal_torch_with_the_head(with_head, tiny_data):
    images = [read_image(str(p)) for p in sorted((tiny_data / "test").rglob("*.png"))[:6]]
    torch_scores = Inspector.from_artifact(with_head.artifact).measure(images)[0]
    ort_scores = Inspector.from_artifact(with_head.artifact, runtime="onnxruntime").measure(images)[0]
    np.testing.assert_allclose(ort_scores, torch_scores, rtol=1e-4)


def test_a_weight_that_costs_the_synthetic_defects_is_not_eligible():
    from model.training.head_fit import keep_floor

    def row(image, pixel, pro, sens, blind=0.9):
        return {"image_auroc": image, "pixel_auroc": pixel, "au_pro": pro, "blind_image_auroc": blind,
                "sensitivity": sens, "nuisance_far": {"1.0": 0.0}}

    table = {"0.0": row(0.90, 0.90, 0.80, 0.80), "1.0": row(0.897, 0.95, 0.85, 0.85), "2.0": row(0.89, 0.96, 0.86, 0.9),
             "4.0": row(0.95, 0.97, 0.9, 0.95, blind=0.88)}  # better on every synthetic defect, but not blind
    config = tiny_config()
    assert list(keep_floor(table, config)) == ["0.0", "1.0"]
    assert list(keep_floor({k: table[k] for k in ("1.0", "2.0")}, config)) == ["1.0", "2.0"]  # no 0: no floor


def test_the_blind_floor_sees_a_head_that_lifts_the_goods():
    from types import SimpleNamespace

    from model.training.head_fit import keep_floor, weight_table

    size, n = 16, 4
    plain = torch.ones(2 * n + 1, size, size)  # goods, synthetic defects, a nuisance copy of the first good
    masks = np.zeros((n, size, size), bool)
    masks[:, 4:8, 4:8] = True
    plain[n:-1][torch.from_numpy(masks)] = 2.0  # the defects score 2, the goods 1: image AUROC 1 without a head
    p = torch.zeros(2 * n + 1, size, size)
    p[:n, 12:, 12:] = 1.0  # the head fires on a corner of every good part ...
    p[n:-1][torch.from_numpy(masks)] = 1.0  # ... and recognises every synthetic defect
    head = DefectHead(torch.zeros(1, 3), torch.zeros(13), torch.ones(13), torch.eye(13), 2)
    head.probability_of = lambda *_: p
    images = ValidationImages([np.zeros((size, size, 3), np.uint8)] * n, [np.zeros((size, size, 3), np.uint8)] * n,
                              masks, ["cutpaste"] * n, list(range(n)), [np.zeros((size, size, 3), np.uint8)],
                              ["blur"], [0], [1.0])
    cells = SimpleNamespace(features=None, nearest=None, gaussian=None, described=lambda: {"nns": plain})
    combiner = AnomalyMapCombiner(size, 0.0)
    inspector = SimpleNamespace(device="cpu", final_maps=lambda d: combiner([d["nns"]]), boosted=combiner.boosted)
    config = tiny_config(**{"head.weights": [0, 4], "head.levels": ["goods"], "postprocess.top_fraction": 0.0})
    table = weight_table(inspector, head, images, cells, config)
    assert table["0.0"]["image_auroc"] == table["4.0"]["image_auroc"] == 1.0  # the defects are boosted too: 8 > 5
    assert table["0.0"]["blind_image_auroc"] == 1.0 and table["4.0"]["blind_image_auroc"] == 0.0  # blind: 2 < 5
    assert list(keep_floor(table, config)) == ["0.0"]


def test_every_weight_is_a_candidate_at_every_level_after_weight_zero():
    config = tiny_config(**{"head.weights": [0, 2, 1]})
    assert candidates(config) == ["0.0", "2.0", "1.0", "2.0/none", "1.0/none"]
    assert [candidate(k) for k in candidates(config)] == [(0.0, "goods"), (2.0, "goods"), (1.0, "goods"),
                                                          (2.0, "none"), (1.0, "none")]
    assert candidates(tiny_config(**{"head.weights": [1], "head.levels": ["none"]})) == ["1.0/none"]
    head = DefectHead(torch.zeros(1, 3), torch.zeros(13), torch.ones(13), torch.eye(13), 2, offset=0.6)
    p = torch.tensor([0.0, 0.3, 0.8])
    assert torch.equal(head.excess(p, 0.0), p)  # no level: the whole probability
    with pytest.raises(ValueError, match="head.levels must be one or more of"):
        FitConfig().with_overrides({"head.levels": ["median"]})


def test_the_fit_prints_where_the_boost_starts(capsys):
    from cli.main import _print_head

    row = {"image_auroc": 0.9, "pixel_auroc": 0.9, "au_pro": 0.8, "sensitivity": 0.9, "nuisance_far": {"1.0": 0.1}}
    record = {"weight": 2.0, "abnormal_bank": 5, "candidates": {"0.0": row, "2.0/none": row}, "chosen": "2.0/none",
              "kept_floor": ["0.0", "2.0/none"], "training": {"level": 0.25}}
    _print_head({**record, "level": "none"})
    _print_head({**record, "level": "goods", "chosen": "0.0"})
    out = capsys.readouterr().out
    assert "by its whole probability (its level on good parts, p = 0.250, unused)" in out
    assert "only above its level on good parts, p = 0.250" in out and "* 2.0/none" in out


def test_a_head_without_a_level_is_stored_with_level_zero(tiny_data, tmp_path, defects):
    report = fit(tiny_data, "nolevel", tmp_path, tiny_config(**{"psg.enabled": False, "head.weights": [2.0],
                                                               "head.levels": ["none"]}), defects=defects)
    assert report.head["level"] == "none" and report.head["training"]["level"] > 0
    assert float(load_artifact(report.artifact).tensors["defect_head"]["offset"]) == 0.0


def test_a_head_from_an_earlier_build_is_refused_with_a_clear_error():
    d = input_channels(3)
    tensors = DefectHead(torch.randn(2, 3), torch.zeros(d), torch.ones(d), torch.eye(d)[:4], 8).tensors()
    del tensors["basis"]
    with pytest.raises(ValueError, match="fit it again with --defects"):
        DefectHead.from_tensors(tensors)


def test_the_heads_direct_projection_equals_projecting_the_built_inputs():
    torch.manual_seed(1)
    c, d = 6, input_channels(6)
    head = DefectHead(torch.randn(9, c), torch.randn(d), torch.rand(d) + 0.5, torch.randn(5, d), 8, 2, 1.0)
    args = (torch.randn(2, c, 5, 5), torch.randn(2, c, 5, 5), torch.rand(2, 20, 20) + 0.1)
    built = head.probability(head.logits(cell_inputs(*args, head.abnormal)))
    assert torch.allclose(head(*args), built, atol=1e-5)


@pytest.mark.parametrize("key", ["head.members", "head.components", "head.bank_size", "head.hidden", "head.epochs"])
def test_head_sizes_below_one_are_refused(key):
    with pytest.raises(ValueError, match="must be whole numbers >= 1"):
        FitConfig().with_overrides({key: 0})
