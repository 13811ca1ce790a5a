"""benchmarks/update_bench.py (issue 35's speed and equivalence targets) end to end on tiny
generated data: every figure is written, finite and positive."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import benchmark_script, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
UPDATABLE = {"calibration.holdout_fraction": 0.25, "selection.min_holdout": 2}


def test_the_bench_writes_speed_and_equivalence(tiny_data, tmp_path, capsys):
    bench = benchmark_script("update_bench")
    out = tmp_path / "bench.json"
    bench.main(["--data", str(tiny_data), "--workdir", str(tmp_path / "work"), "--out", str(out),
                "--n-update", "3"], config=tiny_config(**UPDATABLE))
    result = json.loads(out.read_text())
    assert result["n_train_good"] == 12 and result["data"] == str(tiny_data)

    speed = result["speed"]
    assert speed["fit_minus"]["n_images"] == 9 and speed["update"]["added_goods"] == 3
    for run in ("full_fit", "fit_minus", "update"):
        assert speed[run]["wall_seconds"] > 0 and speed[run]["seconds"]["total"] > 0
    for key in ("ratio_wall", "ratio_stages"):
        assert math.isfinite(speed[key]) and speed[key] > 0
    assert isinstance(speed["meets_target"], bool)
    assert all(math.isfinite(speed["update"]["metrics"][m]) for m in ("image_auroc", "pixel_auroc", "au_pro"))

    eq = result["equivalence"]
    assert eq["half_fit"]["n_images"] == 6 and eq["half_update"]["added_goods"] == 6
    for run in ("full_fit", "half_plus_update"):
        for metric in ("image_auroc", "pixel_auroc", "au_pro"):
            assert math.isfinite(eq[run][metric]) and eq[run][metric] > 0
    assert set(eq["difference"]) == {"image_auroc", "pixel_auroc", "au_pro"}
    assert all(math.isfinite(v) for v in eq["difference"].values())
    assert math.isfinite(eq["max_abs_difference"]) and isinstance(eq["meets_target"], bool)

    # the fits read symlinks to the data's images, never copies; their artifacts sit in the workdir
    linked = list((tmp_path / "work" / "full" / "train" / "good").iterdir())
    assert len(linked) == 12 and all(f.is_symlink() for f in linked)
    assert (tmp_path / "work" / "artifacts" / "full").exists()
    assert "update / full fit" in capsys.readouterr().out
