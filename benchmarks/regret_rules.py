"""The regret of selection rules on every collected case: the chosen (candidate, image score)'s
real metrics against the best candidate's.

    PYTHONPATH=. .venv/bin/python benchmarks/regret_rules.py runs/regret/*/ [--rules current,...] [--table]

Reads ``<case>/figures.json`` (``regret_figures.py``) and ``<case>/real.json``
(``regret_collect.py``). A rule reads only the validation figures. The regret of image AUROC is
against the best (candidate, image score) pair; of AU-PRO and pixel AUROC against the best
candidate. ``goods flagged`` is the share of the test's good parts above the chosen pair's
calibrated threshold.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

SALIENT = ("cutpaste", "scar", "perlin_texture", "perlin_patch")
FIGURES = "figures.json"  # --one-defect: figures-one.json (one synthetic defect per good, as the fit makes)


def mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else 0.0


def sens(block: dict) -> float:
    return mean([block.get("image_auroc"), block.get("pixel_auroc"), block.get("au_pro")])


def family_mean(row: dict, pixel_row: dict, families) -> float:
    """Mean over ``families`` of the image AUROC (``row``) and pixel metrics (``pixel_row``)."""
    out = []
    for f in families:
        if f in row["families"]:
            out.append(mean([row["families"][f]["image_auroc"], pixel_row["families"][f].get("pixel_auroc"),
                             pixel_row["families"][f].get("au_pro")]))
    return mean(out)


def pick(table: dict, score: Callable[[str, str], float], robust: Callable[[str, str], bool], order, tie=0.002):
    """The first (candidate, fraction) in ``order`` within ``tie`` of the best ``score`` among the robust ones."""
    pairs = [(c, f) for c in order for f in table[c]]
    ok = [p for p in pairs if robust(*p)] or pairs
    best = max(score(*p) for p in ok)
    return next(p for p in ok if score(*p) >= best - tie)


# -- rules ------------------------------------------------------------------------------------

ORDER = ("product_shift5", "product", "gaussian", "nns")  # as selection.candidates


def current(fig: dict) -> tuple[str, str]:
    """The shipped rule (issue 16): top fraction per candidate by the same rule, then the candidates;
    robust = nuisance shift at strength 1 <= 2 x lowest + 0.25; sensitivity on the salient families
    (+ 2 x labelled)."""
    def s(c, f):
        row, px = fig[c][f], fig[c]["0.0"]
        v = family_mean(row, px, SALIENT)
        if "labelled" in row:
            v = (v + 2 * mean([row["labelled"]["image_auroc"], px["labelled"].get("pixel_auroc"),
                               px["labelled"].get("au_pro")])) / 3
        return v

    shift = {c: {f: fig[c][f]["nuisance"]["1.0"]["shift"] for f in fig[c]} for c in ORDER}
    # per candidate: its own fraction first
    chosen_f = {}
    for c in ORDER:
        lim = 2 * min(shift[c].values()) + 0.25
        fs = [f for f in fig[c] if shift[c][f] <= lim]
        best = max(s(c, f) for f in fs)
        chosen_f[c] = next(f for f in fs if s(c, f) >= best - 0.002)
    lim = 2 * min(shift[c][chosen_f[c]] for c in ORDER) + 0.25
    robust = [c for c in ORDER if shift[c][chosen_f[c]] <= lim]
    best = max(s(c, chosen_f[c]) for c in robust)
    c = next(c for c in robust if s(c, chosen_f[c]) >= best - 0.002)
    return c, chosen_f[c]


RULES: dict[str, Callable[[dict], tuple[str, str]]] = {"current": current}


# -- evaluation -------------------------------------------------------------------------------


def regret(real: dict, chosen: tuple[str, str], names=ORDER) -> dict:
    c, f = chosen
    best_img = max(real[n]["by_fraction"][g]["image_auroc"] for n in names for g in real[n]["by_fraction"])
    out = {"image_auroc": best_img - real[c]["by_fraction"][f]["image_auroc"],
           "goods_flagged": real[c]["by_fraction"][f]["good_far"]}
    for m in ("au_pro", "pixel_auroc"):
        if real[c][m] is not None:
            out[m] = max(real[n][m] for n in names) - real[c][m]
    return out


def load_case(case: Path, nodrift: Path | None) -> tuple[dict, dict]:
    """The case's figures and real metrics, with the candidates of the same case collected without
    the Gaussian's drift tolerance (``nodrift``, an earlier collection) added under ``<name>_nd``."""
    fig = json.loads((case / FIGURES).read_text())
    real = json.loads((case / "real.json").read_text())
    other = nodrift / case.name if nodrift is not None else None
    if other is not None and (other / "figures.json").exists():
        fig_nd = json.loads((other / "figures.json").read_text())
        real_nd = json.loads((other / "real.json").read_text())
        for name in ("product", "product_shift5", "gaussian"):
            fig[f"{name}_nd"], real[f"{name}_nd"] = fig_nd[name], real_nd[name]
    return fig, real


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cases", nargs="+", type=Path)
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--table", action="store_true", help="print every candidate's figures too")
    p.add_argument("--nodrift", type=Path, default=None, help="an earlier collection without the drift tolerance")
    p.add_argument("--one-defect", action="store_true", help="figures of one synthetic defect per good")
    args = p.parse_args()
    global FIGURES
    FIGURES = "figures-one.json" if args.one_defect else "figures.json"
    rules = args.rules.split(",")
    worst = {r: {"image_auroc": 0.0, "au_pro": 0.0} for r in rules}
    for case in args.cases:
        if not (case / FIGURES).exists():
            continue
        fig, real = load_case(case, args.nodrift)
        names = [n for n in fig if n in real and n != "product_shift2"]
        cells = []
        for r in rules:
            chosen = RULES[r](fig)
            g = regret(real, chosen, names)
            for m in worst[r]:
                worst[r][m] = max(worst[r][m], g.get(m) or 0.0)
            cells.append(f"{r}: {chosen[0]}@{chosen[1]} img -{g['image_auroc']:.4f} pro -{g.get('au_pro', 0):.4f} "
                         f"flag {g['goods_flagged']:.2f}")
        print(f"{case.name:<22} " + " | ".join(cells))
        if args.table:
            for n in names:
                r0 = real[n]
                print(f"    {n:<15} real img " + "/".join(f"{r0['by_fraction'][f]['image_auroc']:.3f}"
                                                   for f in r0["by_fraction"])
                      + f" pro {r0['au_pro']:.4f} flag " + "/".join(f"{r0['by_fraction'][f]['good_far']:.2f}"
                                                                   for f in r0["by_fraction"]))
    for r, w in worst.items():
        print(f"worst regret {r}: image AUROC {w['image_auroc']:.4f}, AU-PRO {w['au_pro']:.4f}")



# -- candidate rules (issue 34) ---------------------------------------------------------------

def _syn(fig, c, f, families=None, labelled_weight=0.0):
    row, px = fig[c][f], fig[c]["0.0"]
    fams = families or list(row["families"])
    v = family_mean(row, px, fams)
    if labelled_weight and "labelled" in row:
        lab = mean([row["labelled"]["image_auroc"], px["labelled"].get("pixel_auroc"), px["labelled"].get("au_pro")])
        v = (v + labelled_weight * lab) / (1 + labelled_weight)
    return v


def make_rule(order, strengths=("0.25", "0.5"), stat="auroc_vs_copies", families=None, tie=0.002, gate=None):
    """Sensitivity with the image AUROC replaced by the synthetic defects' AUROC against goods and
    nuisance copies (mean over ``strengths``); pixel metrics as usual."""
    def rule(fig):
        def score(c, f):
            row, px = fig[c][f], fig[c]["0.0"]
            img = mean([row["nuisance"][g][stat] for g in strengths])
            pix = mean([px["synthetic"].get("pixel_auroc"), px["synthetic"].get("au_pro")])
            fam = _syn(fig, c, f, families)
            return mean([img, pix, fam])
        names = [c for c in order if c in fig]
        return pick({c: fig[c] for c in names}, score, lambda c, f: True, names, tie)
    return rule


ORDER_ND = ("product_nd", "product", "product_shift5", "gaussian", "nns")
RULES["joint"] = make_rule(ORDER)
RULES["joint_nd"] = make_rule(ORDER_ND)



def robust_rule(order, delta=0.01, eps=0.02, stat="rank", strengths=None, tie=0.002, labelled_weight=0.0):
    """Among the candidates whose family-balanced sensitivity is within ``delta`` of the best, the
    one whose nuisance copies move least (``stat`` averaged over ``strengths``); within ``eps`` of
    that, the earlier one. Each candidate's image score first, by sensitivity."""
    def rule(fig):
        names = [c for c in order if c in fig]
        frac = {}
        for c in names:
            sc = {f: _syn(fig, c, f, labelled_weight=labelled_weight) for f in fig[c]}
            best = max(sc.values())
            frac[c] = next(f for f in fig[c] if sc[f] >= best - tie)
        sens_ = {c: _syn(fig, c, frac[c], labelled_weight=labelled_weight) for c in names}
        top = max(sens_.values())
        near = [c for c in names if sens_[c] >= top - delta]
        gs = strengths or list(fig[names[0]]["0.0"]["nuisance"])
        moved = {c: mean([fig[c][frac[c]]["nuisance"][g][stat] for g in gs]) for c in near}
        low = min(moved.values())
        c = next(c for c in near if moved[c] <= low + eps)
        return c, frac[c]
    return rule


for _gs in (("0.25", "1.0"), ("0.5", "1.0"), ("0.25", "0.5"), ("1.0",), ("0.5",), ("0.125", "0.5")):
    for _e in (0.02, 0.05, 0.1):
        RULES[f"g{'+'.join(_gs)}_{_e}"] = robust_rule(ORDER, 0.01, _e, stat="far", strengths=_gs)
for _d in (0.005, 0.01, 0.02):
    for _e in (0.0, 0.01, 0.02, 0.05):
        RULES[f"r{_d}_{_e}"] = robust_rule(ORDER, _d, _e)
        RULES[f"f{_d}_{_e}"] = robust_rule(ORDER, _d, _e, stat="far")
        RULES[f"a{_d}_{_e}"] = robust_rule(ORDER, _d, _e, stat="shift")



def product_rule(order=ORDER, delta=0.01, eps=0.1, grades=("1.0", "0.5", "0.25"), saturated=0.9, tie=0.002,
                 pooled=False, labelled_weight=0.0):
    """The rule as built into the fit: sensitivity (per family, or ``pooled``), near-best within
    ``delta``, then the lowest nuisance FAR at the strongest grade where the near-best are not all
    saturated, within ``eps`` the earlier."""
    def sens_of(fig, c, f):
        if not pooled:
            return _syn(fig, c, f, labelled_weight=labelled_weight)
        row, px = fig[c][f], fig[c]["0.0"]
        img = mean([v["image_auroc"] for v in row["families"].values()])
        v = mean([img, px["synthetic"]["pixel_auroc"], px["synthetic"]["au_pro"]])
        if labelled_weight and "labelled" in row:
            lab = mean([row["labelled"]["image_auroc"], px["labelled"].get("pixel_auroc"), px["labelled"].get("au_pro")])
            v = (v + labelled_weight * lab) / (1 + labelled_weight)
        return v

    def rule(fig):
        names = [c for c in order if c in fig]
        frac = {}
        for c in names:
            sc = {f: sens_of(fig, c, f) for f in fig[c]}
            frac[c] = next(f for f in fig[c] if sc[f] >= max(sc.values()) - tie)
        s = {c: sens_of(fig, c, frac[c]) for c in names}
        near = [c for c in names if s[c] >= max(s.values()) - delta]
        far = {g: {c: fig[c][frac[c]]["nuisance"][g]["far"] for c in near} for g in grades}
        g = next((g for g in grades if min(far[g].values()) < saturated), grades[-1])
        low = min(far[g].values())
        c = next(c for c in near if far[g][c] <= low + eps)
        return c, frac[c]
    return rule


RULES["product"] = product_rule()
RULES["product_pooled"] = product_rule(pooled=True)
RULES["product_d02"] = product_rule(delta=0.02)
RULES["product_e1"] = product_rule(eps=0.1)
RULES["product_l3"] = product_rule(labelled_weight=3)
RULES["product_l1"] = product_rule(labelled_weight=1)
RULES["product_l9"] = product_rule(labelled_weight=9)


if __name__ == "__main__":
    main()
