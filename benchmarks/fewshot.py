"""Issue 17's protocol: the defect head against K = 0, on shots drawn from the test set.

    PYTHONPATH=. .venv/bin/python benchmarks/fewshot.py --data ../shared/data/magnetic_tile/magnetic_tile \\
        --name mt --out runs/fewshot/mt.json [--ks 1,2,5] [--seeds 0,1,2] [--regimes general,hard]
    .venv/bin/python benchmarks/fewshot.py --table runs/fewshot/mt.json

The category is fitted once without shots (PSG off, the scoring chosen as usual): that is the
K = 0 row and the variant every head is trained on. For every regime, K and seed, shots are
drawn from the test images whose mask is not empty:

* **general**: K of every defect type; scored on the rest of the test set (seen types);
* **hard**: K of one type (the seed picks it); scored on the goods and the other types (unseen).

The head is trained and its weight chosen by the product's own ``head_fit.fit_head``, and the
thresholds come from F1 on the held-out goods plus the shots, capped at the false-alarm-rate
ones, as ``fit --defects`` sets them (F1 at the uncapped F1 thresholds is recorded beside it).
The test set and the fit's validation images of the held-out goods (as the fit's validate stage
records them) are described once through the variant; the maps with and without the head come
from the Inspector's own combiner on those branch maps (``tests/test_defect_head.py`` checks
that the served score equals ``evaluate``'s). K = 0 is scored on the same reduced test set,
with its false-alarm-rate thresholds. Reported per row: image AUROC, pixel AUROC, AU-PRO, pixel
AP, image F1 and pixel F1 at the row's own thresholds, AU-PRO per type, and the head's time.

With ``--ceiling`` every row also scores each candidate of the weight table (every weight and
level) on the test set itself, with a head trained by the product's recipe at one weight (no
validation): the best of them is what a perfect choice of weight and level could reach with
that head, a ceiling for the validation, never a result (``--table`` prints it apart).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli.main import parse_pairs  # noqa: E402
from model.jobs.dataset import list_test_set, read_mask  # noqa: E402
from model.jobs.fit import fit  # noqa: E402
from model.jobs.host import keep_freed_memory  # noqa: E402
from model.method.amc import image_scores  # noqa: E402
from model.method.calibration import best_f1_threshold, calibrate_on_good, calibrate_with_defects  # noqa: E402
from model.method.config import FitConfig  # noqa: E402
from model.reporting import metrics  # noqa: E402
from model.runtime.imageio import read_image, resize_rgb  # noqa: E402
from model.runtime.inspector import Inspector  # noqa: E402
from model.training.described import Cells, describe  # noqa: E402
from model.training.head_fit import FIGURES, boost_start, candidate, candidates, fit_head  # noqa: E402
from model.training.validation_images import validation_images  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "au_pro", "pixel_ap", "image_f1", "pixel_f1")


@torch.inference_mode()
def final_maps(inspector: Inspector, cells: Cells, head=None, chunk: int = 32) -> np.ndarray:
    """Final maps ``[N, S, S]`` of described images, boosted by ``head`` (its weight) when given."""
    out = []
    for start in range(0, len(cells), chunk):
        part = cells.take(range(start, min(start + chunk, len(cells))))
        boost = None
        if head is not None and float(head.weight) > 0:
            boost = head.weight * head(part.features, part.nearest, part.gaussian)
        out.append(inspector.final_maps(part.described(), boost).numpy())
    return np.concatenate(out)


def scores_of(maps: np.ndarray, inspector: Inspector) -> np.ndarray:
    fraction = inspector.config.postprocess.image_top_fraction
    return image_scores(torch.from_numpy(maps), fraction).numpy().astype(np.float64)


def block(scores, labels, maps, masks, thresholds, types) -> dict:
    row = metrics.metric_block(scores, labels, maps, masks)
    row["pixel_ap"] = metrics.average_precision(maps, masks)
    row["image_f1"] = metrics.f1_at(scores, labels, thresholds.image)
    row["pixel_f1"] = metrics.f1_at(maps, masks, thresholds.pixel)
    good = types == "good"
    row["au_pro_by_type"] = {t: metrics.au_pro(maps[good | (types == t)], masks[good | (types == t)])
                             for t in sorted(set(types) - {"good"})}
    return row


def ceiling(inspector: Inspector, made, made_cells: Cells, test: Cells, images: list[np.ndarray],
            masks: np.ndarray, types: np.ndarray, labels: np.ndarray, shots: list[int], keep: np.ndarray,
            config: FitConfig) -> dict[str, dict]:
    """Image AUROC, pixel AUROC and AU-PRO of every candidate (``head_fit.candidates``) on the
    scored test images ``keep``, with one head trained on the ``shots`` at a single weight (no
    validation), then given each candidate's weight and boost start in turn."""
    head, _ = fit_head(inspector, replace(made, labelled=[images[i] for i in shots]), [masks[i] for i in shots],
                       [str(types[i]) for i in shots], config.with_overrides({"head.weights": [1.0]}),
                       Cells.concat([made_cells, test.take(shots)]))
    starts = {level: boost_start(head, level) for level in config.head.levels}
    cells, out = test.take(np.flatnonzero(keep)), {}
    for key in candidates(config):
        weight, level = candidate(key)
        head.weight.fill_(weight)
        head.offset.fill_(starts[level])
        maps = final_maps(inspector, cells, head)
        out[key] = metrics.metric_block(scores_of(maps, inspector), labels[keep], maps, masks[keep])
    return out


def draw(types: np.ndarray, nonempty: np.ndarray, regime: str, k: int, seed: int) -> tuple[list[int], str | None]:
    """Indices of the shots, and the one type of the hard regime."""
    rng = np.random.default_rng(seed)
    kinds = sorted(set(types) - {"good"})
    chosen = [kinds[seed % len(kinds)]] if regime == "hard" else kinds
    picks = []
    for t in chosen:
        candidates = np.flatnonzero((types == t) & nonempty)
        picks += sorted(rng.choice(candidates, min(k, len(candidates)), replace=False).tolist())
    return picks, (chosen[0] if regime == "hard" else None)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    out = Path(args.out)
    config = FitConfig().with_overrides({"psg.enabled": False, "head.enabled": False})
    root, t0 = out.parent / f"{args.name}-artifacts", time.perf_counter()
    fit_seconds = None
    if not (root / args.name / "manifest.json").is_file():  # one K = 0 fit per category, reused
        fit(args.data, args.name, root, config)
        fit_seconds = round(time.perf_counter() - t0, 1)
    inspector = Inspector.from_artifact(root / args.name)
    # the head as this build configures it: the reused K = 0 artifact stores the head config of the build that fit it
    cfg = replace(inspector.config, head=FitConfig().head).with_overrides(parse_pairs(args.set))
    size = cfg.image_size
    holdout = inspector.manifest.training.holdout_files
    goods = [resize_rgb(read_image(str(Path(args.data) / "train" / "good" / f)), size) for f in holdout]
    samples, _ = list_test_set(args.data)
    images = [resize_rgb(read_image(str(s.path)), size) for s in samples]
    types = np.array([s.defect for s in samples])
    labels = np.array([s.label for s in samples])
    masks = np.stack([read_mask(s, size) for s in samples])
    nonempty = masks.reshape(len(masks), -1).any(1)
    made = validation_images(goods, cfg)  # the fit's validation images, described once as its validate stage does
    test, made_cells = describe(inspector, images), describe(inspector, made.all)
    good_cells = made_cells.take(range(len(goods)))
    base_maps, good_maps = final_maps(inspector, test), final_maps(inspector, good_cells)
    base_scores, good_scores = scores_of(base_maps, inspector), scores_of(good_maps, inspector)
    base_thresholds = calibrate_on_good(good_scores, good_maps, cfg.calibration.image_false_alarm_rate,
                                        cfg.calibration.pixel_false_alarm_rate)
    result = {"category": args.name, "fit_seconds_k0": fit_seconds, "scoring": cfg.scoring, "head": asdict(cfg.head),
              "n_test": len(samples), "n_holdout": len(goods), "rows": []}
    last_head = None
    for regime in args.regimes.split(","):
        for k in [int(v) for v in args.ks.split(",")]:
            for seed in [int(v) for v in args.seeds.split(",")]:
                shots, hard_type = draw(types, nonempty, regime, k, seed)
                t = time.perf_counter()
                head, record = fit_head(inspector, replace(made, labelled=[images[i] for i in shots]),
                                        [masks[i] for i in shots], [str(types[i]) for i in shots], cfg,
                                        Cells.concat([made_cells, test.take(shots)]))
                head_seconds = time.perf_counter() - t
                last_head = head or last_head
                keep = np.array([i not in set(shots) and types[i] != hard_type for i in range(len(samples))])
                maps = final_maps(inspector, test.take(np.flatnonzero(keep)), head)
                scores = scores_of(maps, inspector)
                cal_cells = Cells.concat([good_cells, test.take(shots)])
                cal_maps = final_maps(inspector, cal_cells, head)
                cal_masks = np.concatenate([np.zeros((len(goods), size, size), bool), masks[shots]])
                cal_labels, cal_scores = np.r_[np.zeros(len(goods)), np.ones(len(shots))], scores_of(cal_maps, inspector)
                thresholds, _ = calibrate_with_defects(cal_scores, cal_labels, cal_maps, cal_masks,
                                                       cfg.calibration.image_false_alarm_rate,
                                                       cfg.calibration.pixel_false_alarm_rate)
                uncapped = (best_f1_threshold(cal_scores, cal_labels)[0],
                            best_f1_threshold(cal_maps, cal_masks)[0])  # F1 alone
                row = {"regime": regime, "k": k, "seed": seed, "shots": [str(samples[i].path.name) for i in shots],
                       "hard_type": hard_type, "weight": record["weight"], "level": record["level"],
                       "head_seconds": round(head_seconds, 1),
                       "n_scored": int(keep.sum()),
                       "k0": block(base_scores[keep], labels[keep], base_maps[keep], masks[keep], base_thresholds,
                                   types[keep]),
                       "head": block(scores, labels[keep], maps, masks[keep], thresholds, types[keep]),
                       "f1_uncapped": {"image_f1": metrics.f1_at(scores, labels[keep], uncapped[0]),
                                       "pixel_f1": metrics.f1_at(maps, masks[keep], uncapped[1])},
                       "thresholds": thresholds.to_dict(),
                       "kept_floor": record["kept_floor"],
                       "validation": {w: {m: r[m] for m in FIGURES} for w, r in record["candidates"].items()}}
                if args.ceiling:
                    row["ceiling"] = ceiling(inspector, made, made_cells, test, images, masks, types, labels, shots,
                                             keep, cfg)
                    print("  ceiling " + " ".join(f"{key}: {r['image_auroc']:.4f}/{r['au_pro']:.4f}"
                                                  for key, r in row["ceiling"].items()), flush=True)
                result["rows"].append(row)
                print(json.dumps({k_: row[k_] for k_ in ("regime", "k", "seed", "weight", "level", "head_seconds")}),
                      _line("K=0", row["k0"]), _line("head", row["head"]), sep="\n", flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=1))
    if last_head is not None:
        result["latency_batch1"] = latency(inspector, last_head, images[:: max(1, len(images) // 20)][:20])
        print("latency", result["latency_batch1"], flush=True)
        out.write_text(json.dumps(result, indent=1))
    return result


def latency(inspector: Inspector, head, images: list[np.ndarray], repeats: int = 3) -> dict:
    """Batch-1 ``Inspector.measure`` wall time without and with ``head`` (weight at least 1, so it
    runs), interleaved image by image; medians in ms and their ratio."""
    head.weight.fill_(max(float(head.weight), 1.0))
    times: dict[str, list[float]] = {"without": [], "with": []}
    inspectors = {"without": inspector.with_head(None), "with": inspector.with_head(head)}
    for _ in range(repeats):
        for image in images:
            for name, attached in inspectors.items():
                t = time.perf_counter()
                attached.measure([image])
                times[name].append((time.perf_counter() - t) * 1000)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"without_ms": round(med["without"], 2), "with_ms": round(med["with"], 2),
            "ratio": round(med["with"] / med["without"], 3), "images": len(images), "repeats": repeats}


def _line(name: str, b: dict) -> str:
    return f"  {name:5s} " + " ".join(f"{m}={b[m]:.4f}" for m in METRICS if b[m] is not None)


def _groups(paths: list[str], wanted=lambda row: True):
    """The rows of the result files ``paths`` that are ``wanted``, as (category, regime, K, rows)."""
    for p in paths:
        res = json.loads(Path(p).read_text())
        groups: dict[tuple, list] = {}
        for r in filter(wanted, res["rows"]):
            groups.setdefault((r["regime"], r["k"]), []).append(r)
        for (regime, k), rows in groups.items():
            yield res["category"], regime, k, rows


def table(paths: list[str]) -> str:
    """Markdown: per category, regime and K, the K = 0 mean, then head - K=0: mean [min, max] over seeds; the
    weights chosen, "/none" where the boost is the head's whole probability."""
    lines = ["| category | regime | K | seeds | weight | " + " | ".join(METRICS) + " | head s |",
             "|---|---|---|---|---|" + "---|" * len(METRICS) + "---|"]
    for category, regime, k, rows in _groups(paths):
        cells = []
        for m in METRICS:
            d = [r["head"][m] - r["k0"][m] for r in rows if r["head"][m] is not None]
            k0 = np.mean([r["k0"][m] for r in rows])
            cells.append(f"{k0:.4f} {np.mean(d):+.4f} [{min(d):+.4f}, {max(d):+.4f}]" if d else "–")
        weights = ",".join(f"{r['weight']:g}" + ("/none" if r.get("level") == "none" else "") for r in rows)
        secs = np.mean([r["head_seconds"] for r in rows])
        lines.append(f"| {category} | {regime} | {k} | {len(rows)} | {weights} | " + " | ".join(cells)
                     + f" | {secs:.0f} |")
    return "\n".join(lines + ceiling_table(paths))


def ceiling_table(paths: list[str]) -> list[str]:
    """Markdown, for the rows run with ``--ceiling``: per metric, the best candidate on the test
    set less K = 0, mean [min, max] over seeds, then the candidates that were best per seed."""
    lines = []
    for category, regime, k, rows in _groups(paths, lambda r: "ceiling" in r):
        cells = []
        for m in ("image_auroc", "au_pro"):
            best = [max(r["ceiling"], key=lambda key, r=r: r["ceiling"][key][m]) for r in rows]
            d = [r["ceiling"][b][m] - r["k0"][m] for r, b in zip(rows, best, strict=True)]
            cells.append(f"{np.mean(d):+.4f} [{min(d):+.4f}, {max(d):+.4f}] ({', '.join(best)})")
        lines.append(f"| {category} | {regime} | {k} | {len(rows)} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return ["", "Ceiling (the best candidate on the test set itself, less K = 0; not a result):", "",
            "| category | regime | K | seeds | image_auroc | au_pro |", "|---|---|---|---|---|---|", *lines]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data")
    p.add_argument("--name")
    p.add_argument("--out")
    p.add_argument("--ks", default="1,2,5")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--regimes", default="general,hard")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="a config override, KEY=JSON, e.g. head.weights=[1] (one weight: no validation)")
    p.add_argument("--ceiling", action="store_true", help="also score every weight and level on the test set")
    p.add_argument("--table", nargs="*")
    args = p.parse_args()
    print(table(args.table) if args.table else json.dumps(run(args)["rows"][-1:], indent=1)[:2000])


if __name__ == "__main__":
    main()
