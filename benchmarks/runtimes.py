"""Torch vs ONNX Runtime feature path: per-stage latency at batch 1, throughput at larger batches.

    .venv/bin/python benchmarks/runtimes.py --artifact runs/ablation_artifacts/bottle-nns_x_gaussian \\
        --images ../shared/data/mvtec_ad/bottle/test/good --threads 2 --seconds 4

Only the feature path changes between runtimes (branches and map combiner stay torch).
Without ``--artifact`` a small default-config artifact is fitted on generated data with
random weights (speed does not depend on weight values). Images are decoded beforehand;
the figures cover preprocess through postprocess. Prints a markdown table and a score
parity line (max relative score difference, max map difference / map max).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.jobs.dataset import list_images  # noqa: E402
from model.jobs.demo_data import generate_category  # noqa: E402
from model.jobs.fit import fit  # noqa: E402
from model.method.config import FitConfig  # noqa: E402
from model.runtime.imageio import read_image  # noqa: E402
from model.runtime.inspector import Inspector  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import time_batches  # noqa: E402  (benchmarks/latency.py: warm-up, timed calls, p50s)

STAGES = ("preprocess", "features", "nns", "gaussian", "amc", "postprocess")


def parity(a: Inspector, b: Inspector, images: list[np.ndarray]) -> tuple[float, float]:
    """(max relative score difference, max |map difference| / max |map|) of ``b`` against ``a``."""
    ra, rb = a.inspect(images), b.inspect(images)
    rel = max(abs(x.score - y.score) / abs(x.score) for x, y in zip(ra, rb, strict=True))
    dmap = max(float(np.abs(x.anomaly_map - y.anomaly_map).max() / np.abs(x.anomaly_map).max())
               for x, y in zip(ra, rb, strict=True))
    return rel, dmap


def load_images(folder: str | None, count: int = 8) -> list[np.ndarray]:
    """Up to ``count`` decoded RGB images from ``folder``, or random 900x900 ones."""
    if folder:
        return [read_image(str(f)) for f in list_images(folder)[:count]]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (900, 900, 3), dtype=np.uint8) for _ in range(count)]


def fitted_artifact(tmp: Path) -> Path:
    """A default-config artifact (random weights) fitted on a small generated category."""
    data = generate_category(tmp / "gen", n_train=24, n_test_good=4, n_test_defect=4, size=256)
    return fit(data, "bench", tmp / "arts", FitConfig().with_overrides({"backbone.weights": "random"})).artifact


def markdown(rows: list[tuple[str, dict]], batches: list[int]) -> str:
    """One row per runtime: batch-1 stage p50s and total, then images/s at each larger batch."""
    big = [b for b in batches if b != 1]
    head = ["runtime"] + [f"b1 {s} ms" for s in STAGES] + ["b1 total ms"] + [f"b{b} img/s" for b in big]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for runtime, by_batch in rows:
        one = by_batch.get(1)
        cells = [runtime]
        cells += [f"{one['stage_ms_p50'].get(s, float('nan')):.1f}" if one else "-" for s in STAGES]
        cells += [f"{one['ms_per_call_p50']:.1f}" if one else "-"]
        cells += [f"{by_batch[b]['images_per_s']:.2f}" for b in big]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", help="artifact folder (default: fit a default-config one, random weights)")
    p.add_argument("--images", help="folder of images (default: random 900x900)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per (runtime, batch)")
    p.add_argument("--runtimes", default="torch,onnxruntime")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    images = load_images(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(args.artifact) if args.artifact else fitted_artifact(Path(tmp))
        inspectors = {}
        for runtime in args.runtimes.split(","):
            t = time.perf_counter()
            inspectors[runtime] = Inspector.from_artifact(artifact, "cpu", runtime=runtime)
            print(f"{runtime}: loaded in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    rows = []
    for runtime, inspector in inspectors.items():
        rows.append((runtime, {b: time_batches(inspector, images, b, args.seconds) for b in batches}))
    cfg = next(iter(inspectors.values())).config
    print(f"CPU, {args.threads} threads, {cfg.backbone.arch} at {cfg.image_size} px, "
          f"input {images[0].shape[1]}x{images[0].shape[0]}, {args.seconds:g} s per setting, p50\n")
    print(markdown(rows, batches))
    if {"torch", "onnxruntime"} <= set(inspectors):
        rel, dmap = parity(inspectors["torch"], inspectors["onnxruntime"], images)
        print(f"\nparity on {len(images)} images: max rel score diff {rel:.2e}, max |map diff| / map max {dmap:.2e}")


if __name__ == "__main__":
    main()
