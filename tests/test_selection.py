"""The self-checking fit: the rule, what it records, forcing a candidate, the small-folder
fallback, and a scene where one candidate is clearly right."""

from __future__ import annotations

import pytest

from benchmarks.variants import make_variant
from model.artifact.store import load_artifact
from model.jobs.dataset import list_defects
from model.jobs.fit import fit
from model.jobs.selection import choose, resolve
from model.method.config import SCORING_CANDIDATES, FitConfig
from tests.conftest import shared_category, tiny_config

AUTO = {"scoring": "auto", "selection.min_holdout": 4, "calibration.holdout_fraction": 0.3}


def row(sensitivity: float, far: float, shift: float = 0.5) -> dict:
    return {"sensitivity": sensitivity, "nuisance_far": far, "nuisance_shift": shift}


def test_the_rule_drops_fragile_candidates_then_takes_the_most_sensitive():
    config = FitConfig()
    table = {"product": row(0.97, 0.6, shift=1.0), "product_shift5": row(0.95, 0.6, shift=0.7),
             "nns": row(0.93, 0.6, shift=0.2)}
    assert choose(table, config) == "nns"  # 1.0 and 0.7 > 2 x 0.2 + 0.25: only NNS is robust
    table["nns"] = row(0.93, 0.6, shift=0.4)
    assert choose(table, config) == "product"  # all robust: the most sensitive
    table["product"] = row(0.9515, 0.6, shift=1.0)
    assert choose(table, config) == "product"  # within the tie margin of 0.95: the earlier one
    table["product"] = row(0.947, 0.6, shift=1.0)
    assert choose(table, config) == "product_shift5"


def test_the_false_alarm_rate_is_reported_not_used():
    """A candidate that finds little can flag the fewest changed goods (the Gaussian on the
    generated scene of BENCHMARKS.md); the saturating rate must not push better ones out."""
    table = {"product": row(0.97, 0.5, shift=0.5), "gaussian": row(0.90, 0.1, shift=0.4)}
    assert choose(table, FitConfig()) == "product"


def test_resolve_names_what_to_validate():
    config = FitConfig()
    names, record = resolve(config, n_holdout=20)
    assert names == list(config.selection.candidates) and record["mode"] == "auto"
    assert resolve(config.with_overrides({"scoring": "nns"}), 20) == (["nns"], {"mode": "forced", "chosen": "nns"})
    assert resolve(config.with_overrides({"gaussian.enabled": False}), 20)[1]["mode"] == "config"
    fused = config.with_overrides({"fusion.enabled": True})
    assert "nns" not in resolve(fused, 20)[0]  # LGFFP feeds the Gaussian: NNS alone is not a valid scoring
    names, record = resolve(config, n_holdout=3)
    assert names == ["product"] and record["mode"] == "fallback" and "too few" in record["fallback"]


def test_auto_records_every_candidate_and_publishes_the_chosen_one(tmp_path, tiny_data):
    report = fit(tiny_data, "auto", tmp_path, tiny_config(**AUTO))
    manifest = load_artifact(report.artifact).manifest
    selection = manifest.fit.selection
    assert selection["mode"] == "auto" and set(selection["candidates"]) == set(FitConfig().selection.candidates)
    for figures in selection["candidates"].values():
        assert 0 <= figures["nuisance_far"] <= 1 and 0 <= figures["sensitivity"] <= 1
        assert set(figures["nuisance_far_by_kind"]) and figures["threshold"] > 0
    chosen = selection["chosen"]
    assert manifest.config.scoring == chosen
    expected = FitConfig().with_scoring(chosen)
    assert manifest.config.nns.enabled == expected.nns.enabled
    assert manifest.config.gaussian.enabled == expected.gaussian.enabled
    assert ("memory_bank" in load_artifact(report.artifact).tensors) == expected.nns.enabled


@pytest.mark.parametrize("name", ["nns", "product_shift5"])
def test_a_forced_candidate_is_published_without_validation(tmp_path, tiny_data, name):
    report = fit(tiny_data, "forced", tmp_path, tiny_config(**{**AUTO, "scoring": name}))
    manifest = load_artifact(report.artifact).manifest
    assert manifest.fit.selection == {"mode": "forced", "chosen": name}
    overrides = SCORING_CANDIDATES[name]
    assert manifest.config.gaussian.enabled == overrides["gaussian.enabled"]
    if name == "product_shift5":
        assert manifest.config.gaussian.shift_tolerance == 5
    assert "validate" not in manifest.fit.seconds


def test_a_small_folder_falls_back_to_the_product_and_says_so(tmp_path, tiny_data):
    report = fit(tiny_data, "small", tmp_path, tiny_config(scoring="auto"))  # 3 held out
    selection = load_artifact(report.artifact).manifest.fit.selection
    assert selection["mode"] == "fallback" and selection["chosen"] == "product"
    assert "add good images" in selection["fallback"]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "right"), [("shift", "product_shift5"), ("scene", "nns")])
def test_auto_picks_the_candidate_that_is_clearly_right(tmp_path, kind, right):
    """Real bottles made into two lines where the plain per-position Gaussian is wrong (measured
    on the real test: BENCHMARKS.md, "Issue 16"): every image shifted by up to 5 % (no fixture;
    ``product_shift5`` is best on all three metrics), and an unfixtured part on a noisy dark
    background (NNS is best; the Gaussian alone loses 0.2 pixel AUROC)."""
    data = make_variant(shared_category("mvtec_ad", "bottle"), tmp_path / kind, kind)
    report = fit(data, kind, tmp_path / "arts", FitConfig())
    selection = load_artifact(report.artifact).manifest.fit.selection
    table = selection["candidates"]
    assert selection["mode"] == "auto"
    assert table[right]["sensitivity"] > table["product"]["sensitivity"], table
    assert selection["chosen"] == right, {n: (r["sensitivity"], r["nuisance_shift"]) for n, r in table.items()}


def test_labelled_defects_join_the_validation(tmp_path, tiny_data):
    defects = list_defects(tiny_data)[:4]
    report = fit(tiny_data, "labelled", tmp_path, tiny_config(**AUTO, **{"psg.enabled": False}), defects=defects)
    selection = load_artifact(report.artifact).manifest.fit.selection
    assert selection["n_images"]["labelled"] == 4
    for figures in selection["candidates"].values():
        real = figures["labelled"]
        assert set(real) == {"image_auroc", "pixel_auroc", "au_pro"} and real["au_pro"] is not None
        synthetic = sum(figures[k] for k in real) / 3
        assert figures["sensitivity"] == pytest.approx((synthetic + 2 * sum(real.values()) / 3) / 3)
