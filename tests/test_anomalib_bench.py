"""Pure helpers of benchmarks/anomalib_side_by_side.py (no anomalib, no network needed)."""

from __future__ import annotations

import numpy as np
import pytest

from model.jobs.dataset import list_test_set
from tests.conftest import benchmark_script


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("anomalib_side_by_side")


def _row(fit_s: float, p50: float) -> dict:
    return {"fit_seconds": fit_s, "latency_ms": {"p50": p50, "p95": p50}, "image_auroc": 1.0,
            "pixel_auroc": 0.98, "au_pro": None}


def test_version_matches_ignores_local_tag(bench):
    assert bench.version_matches("2.14.1+cu130", "2.14.1")
    assert bench.version_matches("0.29.1", "0.29.1")
    assert not bench.version_matches("2.14.0", "2.14.1")
    assert not bench.version_matches("", "2.14.1")


def test_pick_evenly(bench):
    items = list(range(10))
    assert bench.pick_evenly(items, None) == items
    assert bench.pick_evenly(items, 20) == items
    assert bench.pick_evenly(items, 3) == [0, 4, 9]


def test_ratios_and_targets(bench):
    rows = {"ours": _row(20.0, 60.0), "padim": _row(25.0, 75.0), "patchcore": _row(2000.0, 150.0)}
    rat = bench.ratios(rows)
    assert rat["patchcore"] == {"fit": 0.01, "latency": 0.4}
    assert rat["padim"] == {"fit": 0.8, "latency": 0.8}
    verdicts = bench.target_verdicts(rat)
    assert verdicts["fit"]["met"] and verdicts["latency"]["met"]
    assert not bench.target_verdicts({"patchcore": {"fit": 0.2, "latency": 0.6}})["latency"]["met"]
    assert bench.ratios({"padim": rows["padim"]}) == {}
    assert bench.target_verdicts(bench.ratios({"ours": rows["ours"], "padim": rows["padim"]})) == {}


def test_markdown_table(bench):
    table = bench.markdown_table({"ours": _row(20.0, 60.0), "patchcore": _row(2000.0, 150.0)})
    assert "| ours | 20.0 | 60.0 (60.0) | 1.0000 | 0.9800 | n/a |" in table
    assert "| patchcore | 0.010x | 0.400x |" in table


def test_subset_and_score_maps(bench, tiny_data, tmp_path):
    subset = bench.subset_category(tiny_data, tmp_path / "subset", train_limit=5, test_limit=2)
    assert len(list((subset / "train" / "good").iterdir())) == 5
    samples, has_masks = list_test_set(subset)
    assert has_masks and all(s.path.is_symlink() for s in samples)
    assert bench.subset_category(tiny_data, tmp_path / "unused", None, None) == tiny_data
    size = 128
    masks = np.stack([bench.read_mask(s, size) for s in samples])
    labels = np.array([s.label for s in samples], dtype=float)
    scores = bench.score_maps(labels, masks.astype(np.float32), samples, size)
    assert scores == {"image_auroc": 1.0, "pixel_auroc": 1.0, "au_pro": pytest.approx(1.0)}
    with pytest.raises(ValueError):
        bench.score_maps(labels, masks[:, :64, :64].astype(np.float32), samples, size)
