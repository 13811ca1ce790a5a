"""Pure helpers of benchmarks/fewshot.py, issue 17's protocol: the draws and the tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import benchmark_script


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("fewshot")


def _row(seed: int, k0: float, ceiling: dict[str, tuple[float, float]]) -> dict:
    block = {m: k0 for m in ("image_auroc", "pixel_auroc", "au_pro", "pixel_ap", "image_f1", "pixel_f1")}
    return {"regime": "general", "k": 2, "seed": seed, "weight": 1.0, "level": "none", "head_seconds": 1.0,
            "k0": block, "head": block,
            "ceiling": {key: {"image_auroc": i, "pixel_auroc": 0.5, "au_pro": a} for key, (i, a) in ceiling.items()}}


def test_general_draws_every_type_and_hard_one(bench):
    types = np.array(["good"] * 3 + ["a"] * 4 + ["b"] * 4)
    nonempty = types != "good"
    shots, hard = bench.draw(types, nonempty, "general", 2, 0)
    assert hard is None and sorted(types[shots].tolist()) == ["a", "a", "b", "b"]
    shots, hard = bench.draw(types, nonempty, "hard", 2, 1)
    assert hard == "b" and types[shots].tolist() == ["b", "b"]
    assert bench.draw(types, nonempty, "general", 2, 0) == bench.draw(types, nonempty, "general", 2, 0)


def test_the_ceiling_is_the_best_candidate_per_seed_and_metric_less_k0(bench, tmp_path):
    rows = [_row(0, 0.5, {"0.0": (0.5, 0.5), "1.0": (0.6, 0.52), "1.0/none": (0.55, 0.58)}),
            _row(1, 0.7, {"0.0": (0.7, 0.7), "1.0": (0.72, 0.71), "1.0/none": (0.8, 0.7)})]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"category": "c", "rows": rows}))
    lines = bench.ceiling_table([str(path)])
    # image AUROC: +0.10 (1.0) and +0.10 (1.0/none); AU-PRO: +0.08 (1.0/none) and +0.01 (1.0)
    assert lines[-1] == ("| c | general | 2 | 2 | +0.1000 [+0.1000, +0.1000] (1.0, 1.0/none) "
                         "| +0.0450 [+0.0100, +0.0800] (1.0/none, 1.0) |")
    assert "Ceiling" in bench.table([str(path)])


def test_rows_without_a_ceiling_print_no_ceiling_table(bench, tmp_path):
    row = _row(0, 0.5, {})
    del row["ceiling"]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"category": "c", "rows": [row]}))
    assert bench.ceiling_table([str(path)]) == [] and "Ceiling" not in bench.table([str(path)])
