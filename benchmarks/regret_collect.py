"""Collect what a selection rule decides on, and what it should have decided, for one case.

    PYTHONPATH=. .venv/bin/python benchmarks/regret_collect.py --data ../shared/data/mvtec_ad/bottle \
        --case bottle --out runs/regret [--defects-per-type 2 --defect-seed 0]

One fit's parts (split, one feature extraction, every scoring candidate of
``selection.candidates`` plus ``product_shift2``), then:

* **validation**: the held-out goods, synthetic defects of every family on them (``--defects``
  per good, families and sizes cycling), nuisance copies of every kind at every strength of
  ``--strengths`` (``--copies`` per good and strength), and the labelled defects when asked
  for (drawn from the test set, per type, seeded). Every candidate's final map of every image
  is kept (float16), so that rules can be tried later without fitting again;
* **real**: every candidate's real test metrics (image AUROC with every image score of
  ``selection.top_fractions``, pixel AUROC, AU-PRO) on the test set without the labelled
  defects, and the share of the test's good parts above the threshold calibration would set
  (each image score's target false-alarm-rate threshold on the held-out goods).

Writes ``<out>/<case>/meta.json``, ``validation.npz`` and ``real.json``
(``benchmarks/regret_rules.py`` reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.jobs.dataset import TestSample, list_defects, list_images, list_test_set, read_mask  # noqa: E402
from model.jobs.fit import split_holdout  # noqa: E402
from model.jobs.host import keep_freed_memory  # noqa: E402
from model.jobs.selection import rankings, validate  # noqa: E402
from model.jobs.variant import fit_parts  # noqa: E402
from model.method.calibration import far_threshold  # noqa: E402
from model.method.config import FitConfig  # noqa: E402
from model.reporting import metrics  # noqa: E402
from model.reporting.progress import silent_progress  # noqa: E402
from model.runtime.execution import Timer  # noqa: E402
from model.runtime.imageio import read_image, resize_rgb  # noqa: E402
from model.training.nuisance import nuisance_suite  # noqa: E402
from model.training.rule import choose_scoring  # noqa: E402
from model.training.synthetic_defects import defect_suite  # noqa: E402
from model.training.validation import fraction_scores, score_candidates  # noqa: E402
from model.training.validation_images import validation_images  # noqa: E402

CANDIDATES = ("product", "product_shift2", "product_shift5", "gaussian", "nns")


def draw_defects(data: Path, per_type: int, seed: int) -> list[TestSample]:
    """``per_type`` labelled defects of each type of ``<data>/test``, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    by_type: dict[str, list[TestSample]] = {}
    for d in list_defects(data):
        by_type.setdefault(d.defect, []).append(d)
    return [group[i] for group in by_type.values() for i in sorted(rng.choice(len(group), per_type, replace=False))]


def validation_set(goods: list[np.ndarray], args, config: FitConfig) -> tuple[list, list, dict]:
    """The validation images and what each is: ``kind`` good / defect / nuisance / labelled, with
    the family, strength, nuisance kind and source good."""
    rng = np.random.default_rng(config.seed + 1)
    sources = goods[: args.sources]
    made = defect_suite(sources, rng, args.defects)
    images = list(goods) + [d for _, d, _, _ in made]
    info = {"kind": ["good"] * len(goods) + ["defect"] * len(made), "family": [None] * len(goods)
            + [f for *_, f in made], "source": list(range(len(goods))) + [s for s, *_ in made],
            "strength": [0.0] * (len(goods) + len(made)), "nuisance": [None] * (len(goods) + len(made))}
    masks = [np.zeros(goods[0].shape[:2], bool)] * len(goods) + [m for _, _, m, _ in made]
    for strength in args.strengths:
        copies = nuisance_suite(sources, rng, (strength,), args.copies)
        images += [c for _, c, _, _ in copies]
        masks += [np.zeros(goods[0].shape[:2], bool)] * len(copies)
        info["kind"] += ["nuisance"] * len(copies)
        info["family"] += [None] * len(copies)
        info["source"] += [s for s, *_ in copies]
        info["strength"] += [strength] * len(copies)
        info["nuisance"] += [k for _, _, k, _ in copies]
    return images, masks, info


def real_rows(inspectors, data: Path, size: int, batch: int, exclude: set[str], hold_scores, fractions,
              far: float) -> dict:
    samples, has_masks = list_test_set(data)
    samples = [s for s in samples if str(s.path) not in exclude]
    images = [resize_rgb(read_image(str(s.path)), size) for s in samples]
    labels = np.array([s.label for s in samples])
    masks = np.stack([read_mask(s, size) for s in samples]) if has_masks else None
    scored = score_candidates(inspectors, images, batch)
    rows = {}
    for name, (_, maps) in scored.items():
        block = metrics.metric_block(fraction_scores(maps, 0.0), labels, maps if has_masks else None, masks)
        by_fraction = {}
        for f in fractions:
            scores = fraction_scores(maps, f)
            threshold = far_threshold(hold_scores[name][str(f)], far)
            by_fraction[str(f)] = {"image_auroc": metrics.auroc(scores, labels),
                                   "good_far": float(np.mean(scores[labels == 0] > threshold)),
                                   "defect_recall": float(np.mean(scores[labels == 1] > threshold)),
                                   "threshold": threshold}
        per_type = {}
        for t in sorted({s.defect for s in samples} - {"good"}):
            keep = np.array([s.defect in ("good", t) for s in samples])
            tmasks = masks[keep] if has_masks else None
            per_type[t] = metrics.metric_block(fraction_scores(maps[keep], 0.0), labels[keep],
                                               maps[keep] if has_masks else None, tmasks)
        rows[name] = {"pixel_auroc": block["pixel_auroc"], "au_pro": block["au_pro"], "by_fraction": by_fraction,
                      "per_type": per_type}
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--case", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--defects-per-type", type=int, default=0)
    p.add_argument("--defect-seed", type=int, default=0)
    p.add_argument("--sources", type=int, default=32, help="held-out goods that get defects and nuisance copies")
    p.add_argument("--defects", type=int, default=3, help="synthetic defects per source good")
    p.add_argument("--copies", type=int, default=1, help="nuisance copies per source good and strength")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    config = FitConfig().with_overrides({"psg.enabled": False, "head.enabled": False,
                                         **{k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}})
    out = args.out / args.case
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    watch = Timer(torch.device("cpu"))
    fit_files, hold_files = split_holdout(list_images(args.data / "train" / "good"), config)
    parts = fit_parts(config, fit_files, "cpu", silent_progress, watch, True, True)
    inspectors = {n: parts.variant(config.with_scoring(n), watch).inspector("cpu") for n in CANDIDATES}
    size = config.image_size
    goods = [resize_rgb(read_image(str(f)), size) for f in hold_files]
    shots = draw_defects(args.data, args.defects_per_type, args.defect_seed) if args.defects_per_type else []
    labelled = [resize_rgb(read_image(str(s.path)), size) for s in shots]
    images, masks, info = validation_set(goods, args, config)
    images += labelled
    masks += [read_mask(s, size) for s in shots]
    info["kind"] += ["labelled"] * len(shots)
    info["family"] += [s.defect for s in shots]
    info["source"] += [-1] * len(shots)
    info["strength"] += [0.0] * len(shots)
    info["nuisance"] += [None] * len(shots)
    t0 = time.perf_counter()
    product_images = validation_images(goods, config, labelled, np.stack([read_mask(s, size) for s in shots])
                                       if shots else None)
    product_table = validate({n: inspectors[n] for n in config.selection.candidates}, product_images, config)
    product_choice = {"chosen": choose_scoring(product_table, config), "candidates": product_table,
                      "rankings": rankings(product_table), "seconds": round(time.perf_counter() - t0, 2),
                      "n_images": len(product_images.all)}
    t0 = time.perf_counter()
    scored = score_candidates(inspectors, images, config.batch_size)
    score_s = time.perf_counter() - t0
    fractions = config.selection.top_fractions
    hold = {n: {str(f): fraction_scores(maps[: len(goods)], f) for f in fractions} for n, (_, maps) in scored.items()}
    np.savez_compressed(out / "validation.npz", masks=np.packbits(np.stack(masks), axis=-1),
                        **{n: maps.astype(np.float16) for n, (_, maps) in scored.items()})
    real = real_rows(inspectors, args.data, size, config.batch_size, {str(s.path) for s in shots}, hold,
                     fractions, config.calibration.image_false_alarm_rate)
    (out / "real.json").write_text(json.dumps(real, indent=1))
    (out / "product.json").write_text(json.dumps(product_choice, indent=1))
    meta = {"case": args.case, "data": str(args.data), "candidates": list(CANDIDATES), "info": info,
            "n_goods": len(goods), "size": size, "fractions": list(fractions), "args": vars(args) | {
                "data": str(args.data), "out": str(args.out)},
            "shots": [str(s.path) for s in shots], "seconds": {**{k: round(v / 1000, 2) for k, v in watch.ms.items()},
                                                               "score_validation": round(score_s, 2),
                                                               "n_validation": len(images),
                                                               "total": round(time.perf_counter() - started, 1)}}
    (out / "meta.json").write_text(json.dumps(meta))
    print(f"{args.case}: the fit chooses {product_choice['chosen']}@{product_table[product_choice['chosen']].get('top_fraction')}; "
          f"{len(images)} validation images scored in {score_s:.1f} s; "
          + "; ".join(f"{n} AU-PRO {r['au_pro']} img {r['by_fraction']['0.0']['image_auroc']:.4f}"
                      for n, r in real.items()))


if __name__ == "__main__":
    main()
