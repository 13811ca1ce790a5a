"""Does the self-checking fit choose well? Every scoring candidate's validation figures against
its real test metrics, from one fit of the category.

    PYTHONPATH=. .venv/bin/python benchmarks/selection.py --data ../shared/data/mvtec_ad/bottle \
        --name bottle --out runs/selection/bottle.json

It runs the fit's own stages (split, one feature extraction, ``selection.select_scoring``'s
validation) and then scores the real test set with every candidate from the same parts.
Per candidate it reports the validation figures (with its chosen image score and the real
image AUROC of every image score it tried), the real image AUROC / pixel AUROC / AU-PRO,
the real false-alarm rate on the test goods at the threshold calibration would set (target
false-alarm rate on the held-out goods), what the rule chose, and the Spearman rank
correlation between the validation sensitivity and the real mean of the three metrics.
Other rules can be tried on the saved validation table (``choose`` reads only it).
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

from model.jobs.dataset import list_images, list_test_set, read_mask  # noqa: E402
from model.jobs.fit import split_holdout  # noqa: E402
from model.jobs.host import keep_freed_memory  # noqa: E402
from model.jobs.selection import branches_needed, resolve, validate  # noqa: E402
from model.jobs.variant import fit_parts  # noqa: E402
from model.method.config import FitConfig  # noqa: E402
from model.reporting import metrics  # noqa: E402
from model.reporting.progress import silent_progress  # noqa: E402
from model.runtime.execution import Timer  # noqa: E402
from model.runtime.imageio import read_image, resize_rgb  # noqa: E402
from model.training.validation import choose, fraction_scores, score_candidates  # noqa: E402
from model.training.validation_images import validation_images  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "au_pro")


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def real_rows(inspectors, table, data: Path, size: int, batch: int) -> dict[str, dict]:
    samples, has_masks = list_test_set(data)
    images = [resize_rgb(read_image(str(s.path)), size) for s in samples]
    labels = np.array([s.label for s in samples])
    masks = np.stack([read_mask(s, size) for s in samples]) if has_masks else None
    scored = score_candidates(inspectors, images, batch)  # the inspectors score with the maximum
    rows = {}
    for name, (_, maps) in scored.items():
        scores = fraction_scores(maps, table[name].get("top_fraction", 0.0))
        block = metrics.metric_block(scores, labels, maps if has_masks else None, masks)
        block["image_auroc_by_fraction"] = {f: metrics.auroc(fraction_scores(maps, float(f)), labels)
                                            for f in table[name].get("top_fractions", {})}
        far = float(np.mean(scores[labels == 0] > table[name]["threshold"]))
        rows[name] = {**block, "good_far": far,
                      "mean": float(np.mean([block[m] for m in METRICS if block[m] is not None]))}
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    config = FitConfig().with_overrides({"psg.enabled": False, **{k: json.loads(v) for k, v in
                                                                   (s.split("=", 1) for s in args.set)}})
    watch = Timer(torch.device("cpu"))
    fit_files, hold_files = split_holdout(list_images(args.data / "train" / "good"), config)
    parts = fit_parts(config, fit_files, "cpu", silent_progress, watch, *branches_needed(config, len(hold_files)))
    names, _ = resolve(config, len(hold_files))
    inspectors = {n: parts.variant(config.with_scoring(n), watch).inspector("cpu") for n in names}
    goods = [resize_rgb(read_image(str(f)), config.image_size) for f in hold_files]
    started = time.perf_counter()
    images = validation_images(goods, config)
    table = validate(inspectors, images, config)
    validate_s = time.perf_counter() - started
    chosen = choose(table, config)
    real = real_rows(inspectors, table, args.data, config.image_size, config.batch_size)
    best = {m: max(r[m] for r in real.values() if r[m] is not None) for m in METRICS if real[names[0]][m] is not None}
    result = {
        "name": args.name, "data": str(args.data), "chosen": chosen, "validation": table, "real": real,
        "chosen_gap": {m: round(best[m] - real[chosen][m], 4) for m in best},
        "spearman": spearman([table[n]["sensitivity"] for n in names], [real[n]["mean"] for n in names]),
        "seconds": {**{k: round(v / 1000, 2) for k, v in watch.ms.items()}, "validate": round(validate_s, 2)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.name}: chose {chosen}; gap to the best candidate {result['chosen_gap']}; "
          f"spearman {result['spearman']:.2f}")
    for n in names:
        v, r = table[n], real[n]
        print(f"  {n:<15} top {v.get('top_fraction', 0):<6} val {v['sensitivity']:.4f} nuisFAR {v['nuisance_far']:.2f} shift {v['nuisance_shift']:.2f} | real "
              + " / ".join(f"{r[m]:.4f}" for m in METRICS if r[m] is not None) + f"  goodFAR {r['good_far']:.2f}")


if __name__ == "__main__":
    main()
