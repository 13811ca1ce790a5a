"""Metrics against scikit-learn / scipy and hand-worked values; plot smoke tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from model.reporting import plots
from model.reporting.metrics import au_pro, auroc, average_precision, binary_counts, f1_at, pro_curve, region_weights, roc_curve

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- AUROC / ROC


def _random_scores(seed: int, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = rng.normal(size=n) + 0.8 * labels
    if ties:
        scores = np.round(scores * 2) / 2  # a handful of distinct values, many cross-class ties
    return scores.astype(np.float32), labels


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn(seed: int, ties: bool) -> None:
    scores, labels = _random_scores(seed, 2000 + 137 * seed, ties)
    assert auroc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), rel=1e-12, abs=1e-12)


def test_auroc_all_tied_is_half() -> None:
    assert auroc(np.ones(10), np.arange(10) % 2) == pytest.approx(0.5)


def test_auroc_accepts_pixel_maps() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((3, 8, 8)) < 0.2
    maps = rng.random((3, 8, 8)) + masks
    assert auroc(maps, masks) == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_auroc_single_class_is_none() -> None:
    assert auroc(np.arange(5.0), np.zeros(5, bool)) is None
    assert auroc(np.arange(5.0), np.ones(5, int)) is None
    with pytest.raises(ValueError):
        roc_curve(np.arange(5.0), np.zeros(5, bool))


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_matches_sklearn(ties: bool) -> None:
    scores, labels = _random_scores(11, 500, ties)
    fpr, tpr, thr = roc_curve(scores, labels)
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    assert (fpr[0], tpr[0], thr[0]) == (0.0, 0.0, np.inf)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-15)
    np.testing.assert_array_equal(thr[1:], ref_thr[1:])
    assert np.all(np.diff(thr[1:]) < 0)  # deduplicated, descending
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, labels), abs=1e-12)


# --------------------------------------------------------------------------- AU-PRO


def _reference_au_pro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3, structure=None) -> float:
    """Brute force: every distinct score as threshold, per-region overlap computed directly."""
    structure = np.ones((3, 3), int) if structure is None else structure
    regions = []
    for i in range(len(masks)):
        labelled, n = ndimage.label(masks[i], structure)
        regions += [(i, labelled == k) for k in range(1, n + 1)]
    ok = ~masks
    curve = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        pro = np.mean([above[i][region].mean() for i, region in regions])
        curve.append((above[ok].sum() / ok.sum(), pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(curve[:-1], curve[1:]):
        if x1 <= limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        elif x0 < limit:  # segment crosses the limit: interpolate the curve at the limit
            y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_at) * (limit - x0)
    return area / limit


def test_au_pro_hand_worked() -> None:
    # Two 4x4 images; region A (2 px, image 0), region B (2x2 = 4 px, image 1); 26 good pixels.
    # PRO weight per defect pixel = 1 / (2 regions * region size): A px 1/4, B px 1/8.
    # Thresholds from the top (a pixel is positive iff score >= t), giving (FPR, PRO):
    #   0.9: one A px                           -> (0,     1/4)
    #   0.8: two B px (tied)                    -> (0,     1/2)
    #   0.7: one good px                        -> (1/26,  1/2)
    #   0.5: the other A px                     -> (1/26,  3/4)
    #   0.4: 12 good px and one B px (tied)     -> (13/26, 7/8)
    #   0.3: the last B px                      -> (1/2,   1)
    #   0.0: the 13 remaining good px           -> (1,     1)
    # Area up to FPR 0.3: [0, 1/26] at PRO 1/2 gives 1/52. On the segment (1/26, 3/4) ->
    # (1/2, 7/8) the slope is (1/8) / (12/26) = 13/48, so PRO(0.3) = 3/4 + 13/48 * (0.3 - 1/26)
    # = 3/4 + 13/48 * 17/65 = 197/240, and the trapezoid is 1/2 * (3/4 + 197/240) * 17/65
    # = 493/2400. Total 1/52 + 493/2400 = 7009/31200; divided by 0.3 -> 7009/9360.
    maps = np.zeros((2, 4, 4), np.float32)
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 0, 0:2] = True
    maps[0, 0, 0], maps[0, 0, 1] = 0.9, 0.5
    masks[1, 2:4, 2:4] = True
    maps[1, 2, 2:4] = 0.8
    maps[1, 3, 2], maps[1, 3, 3] = 0.4, 0.3
    maps[0, 3, 3] = 0.7  # one good pixel
    good_04 = [(0, 2, c) for c in range(4)] + [(0, 3, c) for c in range(3)]
    good_04 += [(1, 0, c) for c in range(4)] + [(1, 1, 0)]
    assert len(good_04) == 12
    for idx in good_04:
        assert not masks[idx]
        maps[idx] = 0.4

    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 26, 1 / 26, 1 / 2, 1 / 2, 1])
    np.testing.assert_allclose(pro, [0, 1 / 4, 1 / 2, 1 / 2, 3 / 4, 7 / 8, 1, 1])
    assert au_pro(maps, masks) == pytest.approx(7009 / 9360, abs=1e-12)
    assert _reference_au_pro(maps, masks) == pytest.approx(7009 / 9360, abs=1e-12)


def _blob_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, h, w = 5, 20, 24
    noise = ndimage.gaussian_filter(rng.normal(size=(n, h, w)), sigma=(0, 2, 2))
    masks = noise > np.quantile(noise, 0.9)
    masks[-1] = False  # a good image: its pixels only count towards the FPR
    maps = rng.normal(size=(n, h, w)) * 0.5 + masks * rng.uniform(0.2, 1.5)
    maps = np.round(maps, 1).astype(np.float32)  # coarse scores: many ties across classes
    return maps, masks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_au_pro_matches_brute_force(seed: int, limit: float) -> None:
    maps, masks = _blob_data(seed)
    assert masks.any()
    assert au_pro(maps, masks, fpr_limit=limit) == pytest.approx(_reference_au_pro(maps, masks, limit), abs=1e-9)


@pytest.mark.parametrize("limit", [0.3, 0.05, 0.5])
@pytest.mark.parametrize("continuous", [False, True])
def test_a_pro_curve_cut_at_its_limit_is_the_whole_curve_up_to_there(limit: float, continuous: bool) -> None:
    maps, masks = _blob_data(3)
    if continuous:
        maps = maps + np.random.default_rng(3).random(maps.shape).astype(np.float32) * 0.01
    whole_fpr, whole_pro = pro_curve(maps, masks)
    fpr, pro = pro_curve(maps, masks, limit)
    n = len(fpr)
    assert n < len(whole_fpr) and fpr[-2] <= limit < fpr[-1]  # ends at the first point past the limit
    # the regions' weights summed in another order among tied scores: equal to rounding
    assert np.array_equal(fpr, whole_fpr[:n]) and np.allclose(pro, whole_pro[:n], rtol=0, atol=1e-12)


def test_au_pro_continuous_scores_match_brute_force() -> None:
    maps, masks = _blob_data(7)
    maps = maps + np.random.default_rng(7).random(maps.shape).astype(np.float32) * 0.01
    assert au_pro(maps, masks) == pytest.approx(_reference_au_pro(maps, masks), abs=1e-9)


def test_au_pro_without_defects_is_none() -> None:
    maps = np.random.default_rng(0).random((3, 6, 6)).astype(np.float32)
    assert au_pro(maps, np.zeros((3, 6, 6), bool)) is None


def test_au_pro_uses_8_connectivity() -> None:
    # A diagonal pair (0,0)-(1,1) is ONE region with 8-connectivity, two with 4-connectivity;
    # plus an isolated pixel (3,3) that alone scores high.
    maps = np.zeros((1, 4, 4), np.float32)
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
    maps[0, 3, 3] = 1.0
    _, n_regions = region_weights(masks)
    assert n_regions == 2
    # 8-conn: curve (0,0) -> (0, 1/2) -> (1, 1); PRO(0.3) = 0.65; area/0.3 = (0.5 + 0.65) / 2.
    assert au_pro(maps, masks) == pytest.approx(0.575, abs=1e-12)
    four = ndimage.generate_binary_structure(2, 1)
    assert _reference_au_pro(maps, masks) == pytest.approx(0.575, abs=1e-12)
    assert _reference_au_pro(maps, masks, structure=four) == pytest.approx((1 / 3 + 1 / 3 + 0.2) / 2)


def test_au_pro_perfect_and_inverted() -> None:
    maps, masks = _blob_data(1)
    assert au_pro(masks.astype(np.float32), masks) == pytest.approx(1.0)
    assert au_pro(1.0 - masks.astype(np.float32), masks) == pytest.approx(0.0)


# --------------------------------------------------------------------------- F1


@pytest.mark.parametrize("seed", range(3))
def test_binary_counts_match_sklearn(seed: int) -> None:
    scores, labels = _random_scores(seed, 300, ties=True)
    for threshold in [-0.5, 0.0, 0.5, float(np.median(scores)), 10.0]:
        pred = scores > threshold
        c = binary_counts(scores, labels, threshold)
        tn, fp, fn, tp = skm.confusion_matrix(labels, pred, labels=[False, True]).ravel()
        assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (tp, fp, fn, tn)
        assert c["precision"] == pytest.approx(skm.precision_score(labels, pred, zero_division=0))
        assert c["recall"] == pytest.approx(skm.recall_score(labels, pred, zero_division=0))
        assert c["f1"] == pytest.approx(skm.f1_score(labels, pred, zero_division=0))
        assert f1_at(scores, labels, threshold) == c["f1"]


def test_f1_threshold_is_strict() -> None:
    # A score equal to the threshold is NOT flagged (product rule: score > threshold).
    c = binary_counts(np.array([0.5, 0.5, 0.9]), np.array([1, 0, 1]), 0.5)
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (1, 0, 1, 1)
    assert c["f1"] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- plots


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE)


def test_plot_roc(tmp_path) -> None:
    scores, labels = _random_scores(0, 20000, ties=False)
    fpr, tpr, _ = roc_curve(scores, labels)  # > MAX_CURVE_POINTS, exercises thinning
    curves = {"image": (fpr, tpr, auroc(scores, labels)), "pixel": (fpr, tpr, None)}
    out = plots.plot_roc(tmp_path / "roc.png", curves, "t")
    assert out == tmp_path / "roc.png" and _is_png(out)


def test_plot_score_histogram(tmp_path) -> None:
    rng = np.random.default_rng(0)
    out = plots.plot_score_histogram(tmp_path / "h.png", rng.normal(size=50), rng.normal(2, 1, size=20), 1.0, "t")
    assert _is_png(out)
    assert _is_png(plots.plot_score_histogram(tmp_path / "h2.png", [1.0, 1.0], [], None, "t"))


def test_plot_pro(tmp_path) -> None:
    maps, masks = _blob_data(0)
    fpr, pro = pro_curve(maps, masks)
    assert _is_png(plots.plot_pro(tmp_path / "pro.png", fpr, pro, au_pro(maps, masks)))


def test_plot_worst_cases(tmp_path) -> None:
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    rows = []
    for k in range(3):
        amap = rng.random((32, 40)).astype(np.float32)
        rows.append(
            {
                "image": rng.integers(0, 256, (32, 40, 3), dtype=np.uint8),
                "anomaly_map": amap,
                "gt_mask": None if k == 0 else amap > 0.8,
                "pred_mask": amap > 0.7,
                "title": f"case {k}",
            }
        )
    before = len(plt.get_fignums())
    assert _is_png(plots.plot_worst_cases(tmp_path / "worst.png", rows))
    assert len(plt.get_fignums()) == before


PLOTS_IN_FRESH_PROCESS = """
import json, sys
import matplotlib

def backend():  # the backend as set, without resolving it (get_backend() alone would select one)
    try:
        return matplotlib.get_backend(auto_select=False)  # matplotlib >= 3.10: None while unselected
    except TypeError:
        return dict.__getitem__(matplotlib.rcParams, "backend")

before = backend()
from model.reporting import plots
state = {"before": repr(before), "import_kept_backend": backend() == before,
         "pyplot_after_import": "matplotlib.pyplot" in sys.modules}
plots.plot_score_histogram(sys.argv[1], [0.0, 1.0], [2.0], 1.5, "t")
state.update(after_plot=repr(backend()), plot_kept_backend=backend() == before,
             pyplot_after_plot="matplotlib.pyplot" in sys.modules)
print(json.dumps(state))
"""


def test_plots_select_no_backend_and_skip_pyplot(tmp_path) -> None:
    """Importing ``model.reporting.plots`` (and plotting) in a fresh process leaves matplotlib's
    backend as it was and never imports ``matplotlib.pyplot``."""
    out = tmp_path / "h.png"
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"} | {"PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", PLOTS_IN_FRESH_PROCESS, str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["import_kept_backend"] and state["plot_kept_backend"], state
    assert not state["pyplot_after_import"] and not state["pyplot_after_plot"], state
    assert _is_png(out)


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(ties: bool) -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=500)
    if ties:
        scores = np.round(scores, 1)
    labels = rng.random(500) < 0.2
    scores[labels] += 0.7
    assert average_precision(scores, labels) == pytest.approx(skm.average_precision_score(labels, scores),
                                                                      abs=1e-12)
    assert average_precision(scores, np.zeros(500)) is None
