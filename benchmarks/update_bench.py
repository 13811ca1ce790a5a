"""Issue 35's speed and equivalence targets for ``factory-inspect update``, in one run.

    nice -n 5 .venv/bin/python benchmarks/update_bench.py \\
        --data ../shared/data/mvtec_ad/bottle --out runs/update_bench.json [--workdir runs/update_bench-XXXX] \\
        [--n-update 20] [--threads 1] [--set key=value ...]

The training images are never copied: each fit reads a folder of symlinks to ``<data>/train/good``
under ``--workdir`` (default: a new temporary folder under ``runs/``), and its artifacts go there too.
The config is ``FitConfig()`` with the ``--set`` overrides (``main(config=...)`` replaces it).

* **Speed** (target: update / full fit <= 0.25): a fit on every good training image but
  ``--n-update`` of them (evenly spaced in sorted order), the update of that artifact with those
  images, and the full fit on every good training image. Wall seconds of each call and the
  stages of its report (``.seconds``); the ratio is given from wall seconds (the headline) and
  from the reports' stage totals.
* **Equivalence** (target: every |difference| <= 0.005): a fit on every other good training
  image in sorted order (the even positions), updated with the others, evaluated on ``<data>/test``
  as ``factory-inspect evaluate`` does (``model.jobs.evaluate.evaluate`` on an ``Inspector``), against
  the full fit evaluated the same way: image AUROC, pixel AUROC and AU-PRO, and their differences.
  The speed experiment's updated artifact is evaluated too, for information (``speed.update.metrics``).

The half fit runs first: it also warms the process (first calls into torch), so the timed fits
and updates that follow all run warm. The load average before and after each timed call is
recorded, since the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli.main import parse_pairs  # noqa: E402
from model.jobs.dataset import list_images  # noqa: E402
from model.jobs.evaluate import evaluate  # noqa: E402
from model.jobs.fit import fit  # noqa: E402
from model.jobs.host import keep_freed_memory  # noqa: E402
from model.jobs.update import update  # noqa: E402
from model.method.config import FitConfig  # noqa: E402
from model.runtime.inspector import Inspector  # noqa: E402
from model.runtime.process import configure_device  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "au_pro")
SPEED_TARGET = 0.25
EQUIVALENCE_TARGET = 0.005
log = logging.getLogger("update_bench")


def link_goods(dst: Path, files: list[Path]) -> Path:
    """An MVTec-layout folder at ``dst`` whose ``train/good`` holds symlinks to ``files``."""
    good = dst / "train" / "good"
    good.mkdir(parents=True)
    for f in files:
        os.symlink(f.resolve(), good / f.name)
    return dst


def spaced(n: int, k: int) -> list[int]:
    """``k`` indices of ``range(n)`` spread evenly (the middle of ``k`` equal slices)."""
    if not 0 < k < n:
        raise ValueError(f"cannot leave {k} of {n} images out")
    return [int((i + 0.5) * n / k) for i in range(k)]


def timed(what: str, call):
    """``call()``, its wall seconds and the 1-minute load average before and after it."""
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = call()
    wall = time.perf_counter() - start
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    log.warning("%s: %.1f s wall (load %s -> %s)", what, wall, *load)
    return result, {"wall_seconds": round(wall, 3), "seconds": dict(result.seconds), "load_1min": load}


def metrics_of(artifact: Path, data: Path, device: str) -> dict:
    """What ``factory-inspect evaluate --no-plots`` reports on ``<data>/test``, the three metrics and counts."""
    report = evaluate(Inspector.from_artifact(artifact, device), data, output_dir=None)
    return {**{m: None if report[m] is None else float(report[m]) for m in METRICS}, "n_images": report["n_images"]}


def run(data: Path, workdir: Path, config: FitConfig, n_update: int = 20, device: str = "cpu") -> dict:
    """Both experiments (module docstring); the figures as a JSON-ready dict."""
    files = list_images(data / "train" / "good")
    held = set(spaced(len(files), n_update))
    minus = [f for i, f in enumerate(files) if i not in held]
    extra = [f for i, f in enumerate(files) if i in held]
    even, odd = files[0::2], files[1::2]
    arts = workdir / "artifacts"

    half_fit, half_fit_t = timed("fit on half", lambda: fit(link_goods(workdir / "half", even), "half", arts, config,
                                                            device=device))
    minus_fit, minus_fit_t = timed(f"fit on all but {n_update}", lambda: fit(
        link_goods(workdir / "minus", minus), "minus", arts, config, device=device))
    upd, upd_t = timed(f"update with {n_update}", lambda: update(minus_fit.artifact, goods=extra, device=device))
    full_fit, full_fit_t = timed("full fit", lambda: fit(link_goods(workdir / "full", files), "full", arts, config,
                                                         device=device))
    half_upd, half_upd_t = timed("update of half with the other half",
                                 lambda: update(half_fit.artifact, goods=odd, device=device))

    full_metrics = metrics_of(full_fit.artifact, data, device)
    updated_metrics = metrics_of(half_upd.artifact, data, device)
    minus_updated_metrics = metrics_of(upd.artifact, data, device)
    diff = {m: _diff(updated_metrics[m], full_metrics[m]) for m in METRICS}
    ratio_wall = upd_t["wall_seconds"] / full_fit_t["wall_seconds"]
    ratio_stages = upd.seconds["total"] / full_fit.seconds["total"]
    stages = {k: v for k, v in upd.seconds.items() if k != "total"}
    return {
        "data": str(data),
        "workdir": str(workdir),
        "config": config.to_dict(),
        "device": device,
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_train_good": len(files),
        "speed": {
            "n_update": n_update,
            "full_fit": {**full_fit_t, "n_images": len(files), "n_fit": full_fit.n_fit, "n_holdout": full_fit.n_holdout,
                         "chosen": _chosen(full_fit.selection)},
            "fit_minus": {**minus_fit_t, "n_images": len(minus), "n_fit": minus_fit.n_fit,
                          "n_holdout": minus_fit.n_holdout, "chosen": _chosen(minus_fit.selection)},
            "update": {**upd_t, "added_goods": upd.added_goods, "held_out": upd.held_out, "chosen": upd.chosen,
                       "parent_chosen": upd.parent_chosen,
                       "largest_stage": max(stages, key=stages.get) if stages else None,
                       "metrics": minus_updated_metrics,  # for information: the equivalence target is on the half
                       "difference": {m: _diff(minus_updated_metrics[m], full_metrics[m]) for m in METRICS}},
            "ratio_wall": round(ratio_wall, 4),
            "ratio_stages": round(ratio_stages, 4),
            "target": SPEED_TARGET,
            "meets_target": bool(ratio_wall <= SPEED_TARGET),
        },
        "equivalence": {
            "half_fit": {**half_fit_t, "n_images": len(even), "n_fit": half_fit.n_fit, "n_holdout": half_fit.n_holdout,
                         "chosen": _chosen(half_fit.selection)},
            "half_update": {**half_upd_t, "added_goods": half_upd.added_goods, "held_out": half_upd.held_out,
                            "chosen": half_upd.chosen, "parent_chosen": half_upd.parent_chosen},
            "full_fit": full_metrics,
            "half_plus_update": updated_metrics,
            "difference": diff,  # half + update minus full fit
            "max_abs_difference": _max_abs(diff),
            "target": EQUIVALENCE_TARGET,
            "meets_target": bool(_max_abs(diff) is not None and _max_abs(diff) <= EQUIVALENCE_TARGET),
        },
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(float(a) - float(b), 6)


def _max_abs(diff: dict) -> float | None:
    values = [abs(v) for v in diff.values() if v is not None]
    return max(values) if len(values) == len(diff) else None


def _chosen(selection: dict | None) -> str | None:
    return (selection or {}).get("chosen")


def table(result: dict) -> str:
    """The figures as two markdown tables."""
    s, e = result["speed"], result["equivalence"]
    fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"  # noqa: E731
    signed = lambda v: "n/a" if v is None else f"{v:+.4f}"  # noqa: E731
    stages = lambda t: ", ".join(f"{k} {v:.1f}" for k, v in t["seconds"].items())  # noqa: E731
    lines = [
        "| run | images | wall s | stages (s) |",
        "|---|---|---|---|",
        f"| full fit | {s['full_fit']['n_images']} | {s['full_fit']['wall_seconds']:.1f} | {stages(s['full_fit'])} |",
        (f"| fit minus {s['n_update']} | {s['fit_minus']['n_images']} | {s['fit_minus']['wall_seconds']:.1f} "
         f"| {stages(s['fit_minus'])} |"),
        (f"| update with {s['n_update']} | {s['update']['added_goods']} | {s['update']['wall_seconds']:.1f} "
         f"| {stages(s['update'])} |"),
        "",
        (f"update / full fit: {s['ratio_wall']:.3f} wall, {s['ratio_stages']:.3f} stage totals "
         f"(target <= {s['target']}: {'met' if s['meets_target'] else 'missed'})"),
        "",
        f"| metric | full fit | half + update | difference | minus {s['n_update']} + update | difference |",
        "|---|---|---|---|---|---|",
        *(f"| {m} | {fmt(e['full_fit'][m])} | {fmt(e['half_plus_update'][m])} | {signed(e['difference'][m])} "
          f"| {fmt(s['update']['metrics'][m])} | {signed(s['update']['difference'][m])} |" for m in METRICS),
        "",
        (f"max |difference| {fmt(e['max_abs_difference'])} (target <= {e['target']}: "
         f"{'met' if e['meets_target'] else 'missed'})"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None, config: FitConfig | None = None) -> dict:
    """Parse ``argv``, run both experiments, write the JSON and print the tables; ``config``
    (a ``FitConfig``) replaces ``FitConfig()`` plus ``--set``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/mvtec_ad/bottle", help="an MVTec-layout category folder")
    p.add_argument("--workdir", default=None, help="symlink folders and artifacts (default: a temp dir under runs/)")
    p.add_argument("--out", default="runs/update_bench.json")
    p.add_argument("--n-update", type=int, default=20, help="good images the speed experiment leaves to the update")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a FitConfig override")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does before a fit
    configure_device(args.device)
    if config is None:
        pairs = parse_pairs(args.set)
        config = FitConfig().with_overrides(pairs) if pairs else FitConfig()
    if args.workdir is None:
        Path("runs").mkdir(exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="update_bench-", dir="runs"))
    else:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    result = run(Path(args.data), workdir, config, args.n_update, args.device)
    result["command"] = " ".join(["benchmarks/update_bench.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
