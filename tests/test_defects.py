"""Labelled defects at fit time: listing, F1 thresholds, PSG chosen per category, and evaluate
leaving the fit's defects out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fastapi.testclient import TestClient

from model.artifact.store import load_artifact
from model.method.calibration import best_f1_threshold, calibrate_on_good, calibrate_with_defects
from model.method.config import FitConfig
from model.jobs.dataset import file_sha256, list_defects
from model.jobs.evaluate import evaluate
from model.jobs import selection
from model.training import validation
from model.training.validation_images import validation_images
from model.jobs.fit import fit
from model.jobs.variant import build_feature_path
from model.runtime.inspector import Inspector
from service.app import create_app
from cli.main import main as cli_main
from service.settings import Settings
from tests.conftest import benchmark_script, config_args, tiny_config

QUICK = {"psg.max_steps": 3, "psg.batch_size": 4}


@pytest.fixture(scope="module")
def defects(tiny_data):
    return list_defects(tiny_data)[::2]


def manifest_of(report) -> dict:
    return json.loads((report.artifact / "manifest.json").read_text())


def test_list_defects_takes_the_defect_folders_with_their_masks(tiny_data, tmp_path):
    found = list_defects(tiny_data)
    assert found and all(d.label and d.mask_path is not None and d.mask_path.is_file() for d in found)
    assert len(found) == sum(1 for p in (tiny_data / "test").rglob("*.png") if p.parent.name != "good")
    nomasks = tmp_path / "nomasks"
    shutil.copytree(tiny_data / "test", nomasks / "test")
    assert all(d.mask_path is None for d in list_defects(nomasks))
    shutil.rmtree(nomasks / "test")
    (nomasks / "test" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match="no defect images"):
        list_defects(nomasks)


def test_with_defects_the_thresholds_keep_the_false_alarm_target_and_record_f1s():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 6 + [1] * 3)
    scores = np.r_[rng.uniform(1, 2, 6), rng.uniform(3, 4, 3)]
    maps = rng.uniform(0, 1, (9, 8, 8)).astype(np.float32)
    masks = np.zeros_like(maps, dtype=bool)
    masks[6:, 2:4, 2:4] = True
    maps[masks] += 2
    far = calibrate_on_good(scores[:6], maps[:6], 0.01, 0.01)
    best = best_f1_threshold(scores, labels), best_f1_threshold(maps, masks)
    t, record = calibrate_with_defects(scores, labels, maps, masks, image_far=0.01, pixel_far=0.01)
    assert (t.image, t.pixel, t.scale) == (far.image, far.pixel, far.scale) and t.method.startswith("far(")
    assert record == {"policy": "far", "far": {"image": far.image, "pixel": far.pixel},
                      "f1": {"image": best[0][0], "image_f1": best[0][1], "pixel": best[1][0], "pixel_f1": best[1][1]}}
    # defects scoring below the goods' extrapolated tail: F1 would lower the image threshold, "far" never does
    low = np.r_[scores[:6], scores[:6].max() - [0.05, 0.1, 0.2]]
    t_low, r_low = calibrate_with_defects(low, labels, maps, masks, image_far=0.01, pixel_far=0.01)
    assert r_low["f1"]["image"] < t_low.image == calibrate_on_good(low[:6], maps[:6], 0.01, 0.01).image
    asked, r_asked = calibrate_with_defects(low, labels, maps, masks, image_far=0.01, pixel_far=0.01, policy="f1")
    assert (asked.image, asked.pixel) == (r_low["f1"]["image"], r_low["f1"]["pixel"]) and r_asked["policy"] == "f1"
    no_masks, r_none = calibrate_with_defects(scores, labels, maps, None, image_far=0.01, pixel_far=0.01, policy="f1")
    assert no_masks.pixel == far.pixel and r_none["f1"]["pixel_f1"] is None and "far(pixel=0.01)" in no_masks.method
    with pytest.raises(ValueError, match="with_defects"):
        calibrate_with_defects(scores, labels, maps, masks, 0.01, 0.01, policy="min")


def test_the_psg_table_leaves_out_the_families_psg_trains_on():
    """PSG trains on CutPaste and Scar: in its table only the other synthetic families count."""
    config = FitConfig()
    rng = np.random.default_rng(0)
    goods = [rng.integers(60, 200, (64, 64, 3), dtype=np.uint8) for _ in range(12)]
    images = validation_images(goods, config.with_overrides({"selection.defects_per_image": 2}))
    n_good, families = len(images.goods), np.array(images.defect_families)
    n = len(images.all)
    scores = np.ones(n)
    scores[:n_good] = np.linspace(0.5, 1.5, n_good)
    scores[n_good: n_good + len(families)] = np.where(np.isin(families, validation.PSG_FAMILIES), 9.0, 0.1)
    maps = np.zeros((n, 64, 64), np.float32)
    every = validation.figures(scores, maps, images, config)
    other = validation.figures(scores, maps, images, config, leave_out=validation.PSG_FAMILIES)
    found = len(validation.PSG_FAMILIES) / len(set(families))  # families count equally: 2 of 5 found
    assert every["image_auroc"] == pytest.approx(found, abs=0.01)
    assert set(every["image_auroc_by_family"]) == set(families)
    assert other["image_auroc"] == 0.0  # only the missed families remain
    assert set(other["image_auroc_by_family"]) == set(families) - set(validation.PSG_FAMILIES)
    assert set(families) - set(validation.PSG_FAMILIES)


def test_psg_enabled_accepts_only_true_false_or_auto():
    assert FitConfig().psg.enabled == "auto"
    for bad in ("maybe", 1, None):
        with pytest.raises(ValueError, match="psg.enabled"):
            FitConfig().with_overrides({"psg.enabled": bad})


def test_auto_without_defects_is_nns_x_gaussian(tiny_data, tmp_path):
    report = fit(tiny_data, "auto", tmp_path, tiny_config(**QUICK))
    m = manifest_of(report)
    assert m["config"]["psg"]["enabled"] is False and m["fit"]["psg_selection"] is None
    assert "psg" not in m["fit"]["seconds"] and m["calibration"]["thresholds"]["method"].startswith("far(")
    assert m["training"]["defects"] is None and m["calibration"]["validation"] is None


@pytest.mark.parametrize("keep_psg", [False, True])
def test_auto_with_defects_fits_both_and_publishes_the_chosen_one(tiny_data, tmp_path, defects, monkeypatch,
                                                                  keep_psg):
    calls, real_choose = [], selection.choose_improvement

    def rule(table, config):
        if set(table) != {"without_psg", "with_psg"}:
            return real_choose(table, config)
        calls.append(table)
        return "with_psg" if keep_psg else "without_psg"

    monkeypatch.setattr("model.jobs.selection.choose_improvement", rule)
    config = tiny_config(**QUICK, **{"head.enabled": False})  # the calibration reads the PSG choice alone
    report = fit(tiny_data, "auto", tmp_path, config, defects=defects)
    m = manifest_of(report)
    record = m["fit"]["psg_selection"]
    assert len(calls) == 1 and record["chosen"] == ("with_psg" if keep_psg else "without_psg")
    assert record["candidates"] == calls[0] and record["left_out"] == ["cutpaste", "scar"]
    assert calls[0]["without_psg"] != calls[0]["with_psg"]  # the two variants score differently
    assert all("labelled" in row for row in calls[0].values())  # the labelled defects are in the table
    assert m["config"]["psg"]["enabled"] is keep_psg and report.psg is keep_psg
    chosen_on_labelled = calls[0][record["chosen"]]["labelled"]
    assert m["calibration"]["validation"] == pytest.approx(chosen_on_labelled, abs=1e-6)
    assert m["calibration"]["thresholds"]["method"].startswith("far(")  # F1's recorded, not used
    assert m["calibration"]["with_defects"]["policy"] == "far"
    assert m["calibration"]["with_defects"]["far"]["image"] == m["calibration"]["thresholds"]["image"]
    assert m["training"]["defects"]["sha256"] == [file_sha256(d.path) for d in defects]
    untrained, _, _ = build_feature_path(config.with_overrides({"psg.enabled": False}))
    published = load_artifact(report.artifact).tensors["backbone"]
    same = all(torch.equal(v, published[k]) for k, v in untrained.backbone.state_dict().items())
    assert same is not keep_psg


def test_fixed_psg_setting_with_defects_fits_once_and_publishes_f1_thresholds_when_asked(tiny_data, tmp_path,
                                                                                          defects):
    report = fit(tiny_data, "off", tmp_path, tiny_config(**{"psg.enabled": False,
                                                            "calibration.with_defects": "f1"}), defects=defects)
    m = manifest_of(report)
    assert m["fit"]["psg_selection"] is None and "psg" not in m["fit"]["seconds"]
    assert m["calibration"]["thresholds"]["method"] == "f1(image,pixel)"
    record = m["calibration"]["with_defects"]
    assert record["policy"] == "f1" and m["calibration"]["thresholds"]["image"] == record["f1"]["image"]
    assert report.with_defects == record and report.thresholds.image == record["f1"]["image"]
    assert set(m["calibration"]["validation"]) == {"image_auroc", "pixel_auroc", "au_pro"}


def test_evaluate_leaves_out_the_fit_defects(tiny_data, tmp_path, defects):
    inspector = Inspector.from_artifact(fit(tiny_data, "d", tmp_path, tiny_config(), defects=defects).artifact)
    total = sum(1 for _ in (tiny_data / "test").rglob("*.png"))
    report = evaluate(inspector, tiny_data)
    assert report["n_excluded"] == len(defects) and report["n_images"] == total - len(defects)
    assert not {str(d.path) for d in defects} & {item["file"] for item in report["images"]}
    everything = evaluate(inspector, tiny_data, exclude=set())
    assert everything["n_excluded"] == 0 and everything["n_images"] == total
    with TestClient(create_app(Settings(artifacts=tmp_path))) as client:
        summary = client.get("/categories/d").json()["manifest"]
    assert summary["labelled_defects"] == len(defects)
    assert summary["validation"] == inspector.manifest.calibration.validation
    assert summary["thresholds"]["method"].startswith("far(")
    assert summary["thresholds_with_defects"] == inspector.manifest.calibration.with_defects
    record = inspector.manifest.fit.psg_selection
    assert summary["psg_selection"] == record and set(record["candidates"]) == {"without_psg", "with_psg"}
    assert summary["image_top_fraction"] == inspector.manifest.config.postprocess.top_fraction == 0.0  # fallback


def test_cli_fit_with_defects_reports_the_choice(tiny_data, tmp_path, capsys):
    def fit_args(defects, *extra):
        return ["fit", "--data", str(tiny_data), "--category", "cli", "--artifacts", str(tmp_path / "arts"),
                "--defects", str(defects), *config_args(tiny_config(**QUICK)), *extra]

    assert cli_main(fit_args(tiny_data)) == 0
    out = capsys.readouterr().out
    assert "without the cutpaste, scar defects PSG trains on" in out and "labelled defects" in out
    assert " without_psg " in out and " with_psg " in out
    assert "head       " in out and "chosen on held-out labelled defects" in out and " 4.0 " in out
    assert cli_main(fit_args(tiny_data, "--set", "psg.enabled=maybe")) == 2
    assert "psg.enabled must be" in capsys.readouterr().err
    assert cli_main(fit_args(tmp_path / "none")) == 2
    assert "no test folder" in capsys.readouterr().err


def test_ablation_draws_the_same_defects_per_type_for_every_row(tiny_data):
    ablation = benchmark_script("ablation")
    drawn = ablation.draw_defects(str(tiny_data), 2, seed=0)
    types = {d.defect for d in list_defects(tiny_data)}
    assert len(drawn) == 2 * len(types) and len({d.path for d in drawn}) == len(drawn)
    assert all(sum(d.defect == t for d in drawn) == 2 for t in types)
    assert [d.path for d in drawn] == [d.path for d in ablation.draw_defects(str(tiny_data), 2, seed=0)]
    assert ablation.draw_defects(str(tiny_data), 0, seed=0) == []

