"""Validation figures of every candidate of a case collected by ``regret_collect.py``, per image
score, per synthetic family, per nuisance strength and for the labelled defects, cached in
``<case>/figures.json``; the real metrics beside them. ``regret_rules.py`` reads these.

    PYTHONPATH=. .venv/bin/python benchmarks/regret_figures.py runs/regret/bottle runs/regret/mt ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.method.calibration import far_threshold  # noqa: E402
from model.reporting import metrics  # noqa: E402
from model.training.validation import fraction_scores  # noqa: E402


def load(case: Path) -> tuple[dict, dict, dict[str, np.ndarray], np.ndarray]:
    meta = json.loads((case / "meta.json").read_text())
    real = json.loads((case / "real.json").read_text())
    data = np.load(case / "validation.npz")
    size = meta["size"]
    masks = np.unpackbits(data["masks"], axis=-1, count=size).astype(bool)
    maps = {n: data[n].astype(np.float32) for n in meta["candidates"]}
    return meta, real, maps, masks


def block(scores: np.ndarray, maps: np.ndarray | None, masks: np.ndarray | None, good: np.ndarray,
          bad: np.ndarray) -> dict:
    """Image AUROC (and with maps pixel AUROC and AU-PRO) of the ``bad`` images against the ``good`` ones."""
    index = np.r_[good, bad]
    labels = np.r_[np.zeros(len(good)), np.ones(len(bad))]
    if maps is None:
        return {"image_auroc": metrics.auroc(scores[index], labels)}
    return metrics.metric_block(scores[index], labels, maps[index], masks[index])


def candidate_figures(meta: dict, maps: np.ndarray, masks: np.ndarray, far: float = 0.01) -> dict:
    info = meta["info"]
    kind = np.array(info["kind"])
    family = np.array([f or "" for f in info["family"]])
    strength = np.array(info["strength"])
    source = np.array(info["source"])
    good = np.flatnonzero(kind == "good")
    out = {}
    for f in meta["fractions"]:
        s = fraction_scores(maps, f)
        t = far_threshold(s[good], far)
        logs = np.log(np.maximum(s, 1e-12))
        margin = max(float(np.log(t) - np.median(logs[good])), 1e-6)
        row: dict = {"threshold": t, "families": {}, "nuisance": {}}
        pixels = f == 0.0  # pixel metrics do not depend on the image score
        for fam in sorted(set(family[kind == "defect"])):
            bad = np.flatnonzero((kind == "defect") & (family == fam))
            row["families"][fam] = block(s, maps if pixels else None, masks, good, bad)
        synthetic = np.flatnonzero(kind == "defect")
        row["synthetic"] = block(s, maps if pixels else None, masks, good, synthetic)
        if (kind == "labelled").any():
            row["labelled"] = block(s, maps if pixels else None, masks, good, np.flatnonzero(kind == "labelled"))
        for g in sorted(set(strength[kind == "nuisance"])):
            copies = np.flatnonzero((kind == "nuisance") & (strength == g))
            moved = (logs[copies] - logs[source[copies]]) / margin
            rank = np.array([np.mean(s[good] < s[i]) for i in copies])
            row["nuisance"][str(g)] = {
                "far": float(np.mean(s[copies] > t)), "shift": float(np.median(moved)),
                "rank": float(np.mean(rank)),
                # synthetic defects against goods and these copies together (image level)
                "auroc_vs_copies": metrics.auroc(np.r_[s[good], s[copies], s[synthetic]],
                                                 np.r_[np.zeros(len(good) + len(copies)), np.ones(len(synthetic))]),
            }
        nk = np.array([k or "" for k in info["nuisance"]])
        row["kinds"] = {}
        for k in sorted(set(nk[kind == "nuisance"])):
            copies = np.flatnonzero((kind == "nuisance") & (nk == k))
            row["kinds"][k] = {"far": float(np.mean(s[copies] > t)),
                               "rank": float(np.mean([np.mean(s[good] < s[i]) for i in copies])),
                               "shift": float(np.median((logs[copies] - logs[source[copies]]) / margin))}
        out[str(f)] = row
    return out


def first_defects(meta: dict) -> np.ndarray:
    """The images the fit itself makes (one synthetic defect per good: the first of each source);
    every good, nuisance copy and labelled defect."""
    info = meta["info"]
    seen, keep = set(), []
    for i, (k, src) in enumerate(zip(info["kind"], info["source"], strict=True)):
        if k == "defect":
            if src in seen:
                continue
            seen.add(src)
        keep.append(i)
    return np.array(keep)


def subset(meta: dict, keep: np.ndarray) -> dict:
    info = {k: [v[i] for i in keep] for k, v in meta["info"].items()}
    return {**meta, "info": info}


def main() -> None:
    torch.set_num_threads(2)
    one = "--one-defect" in sys.argv
    for arg in [a for a in sys.argv[1:] if not a.startswith("--")]:
        case = Path(arg)
        if not (case / "real.json").exists():
            print(f"{case}: not collected yet")
            continue
        meta, real, maps, masks = load(case)
        if one:
            keep = first_defects(meta)
            meta, masks, maps = subset(meta, keep), masks[keep], {n: m[keep] for n, m in maps.items()}
        figures = {n: candidate_figures(meta, maps[n], masks) for n in meta["candidates"]}
        (case / ("figures-one.json" if one else "figures.json")).write_text(json.dumps(figures))
        print(f"{case}: figures of {len(figures)} candidates")


if __name__ == "__main__":
    main()
