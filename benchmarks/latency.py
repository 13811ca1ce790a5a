"""Model-path latency per stage and throughput per batch size, on CPU or CUDA.

    .venv/bin/python benchmarks/latency.py --device cpu --threads 2 --images ../shared/data/mvtec_ad/bottle/test/good
    python3 benchmarks/latency.py --device cuda --weights random          # on a GPU machine

The model is fitted first (on ``--data``, or a generated category when absent); speed does
not depend on weight values, so ``--weights random`` is fine for timing. Images are decoded
beforehand: the figures cover preprocess (resize + normalise) through the final map.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import FitConfig  # noqa: E402
from model.fit import fit, list_images  # noqa: E402
from model.imageio import read_image  # noqa: E402
from model.inspector import Inspector  # noqa: E402
from model.synthetic import generate_category  # noqa: E402


def time_batches(inspector: Inspector, images: list[np.ndarray], batch: int, seconds: float) -> dict:
    """Repeat batches of ``batch`` images for about ``seconds`` (3 warm-ups, at least 5 calls).

    Returns p50/p95 ms per call, images/s at p50 and each stage's p50.
    """
    pool = (images * (batch // len(images) + 1))[:batch]
    for _ in range(3):
        inspector.inspect(pool)  # warm-up (allocator, cuDNN autotune)
    totals, stages = [], {}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(totals) < 5:
        t = time.perf_counter()
        res = inspector.inspect(pool)
        totals.append((time.perf_counter() - t) * 1000)
        for k, v in res[0].timings_ms.items():
            stages.setdefault(k, []).append(v)
    p50 = float(np.percentile(totals, 50))
    return {
        "batch": batch,
        "calls": len(totals),
        "ms_per_call_p50": round(p50, 3),
        "ms_per_call_p95": round(float(np.percentile(totals, 95)), 3),
        "images_per_s": round(batch * 1000 / p50, 1),
        "stage_ms_p50": {k: round(float(np.percentile(v, 50)), 3) for k, v in stages.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", help="category to fit (default: generated)")
    p.add_argument("--images", help="folder of images to time (default: generated 900x900)")
    p.add_argument("--weights", default="embedded")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--out")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    overrides = {"backbone.weights": args.weights}
    overrides.update({k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)})
    config = FitConfig().with_overrides(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else generate_category(Path(tmp) / "gen", n_train=24, n_test_good=4,
                                                                   n_test_defect=4, size=256)
        t = time.perf_counter()
        report = fit(data, "bench", Path(tmp) / "arts", config, device=args.device)
        fit_s = time.perf_counter() - t
        inspector = Inspector.from_artifact(report.artifact, args.device)
    if args.images:
        images = [read_image(str(f)) for f in list_images(args.images)[:16]]
    else:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (900, 900, 3), dtype=np.uint8) for _ in range(8)]
    rows = [time_batches(inspector, images, int(b), args.seconds) for b in args.batch_sizes.split(",")]
    out = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "threads": args.threads,
        "config": overrides,
        "input": f"{images[0].shape[1]}x{images[0].shape[0]}",
        "fit_seconds": round(fit_s, 1),
        "rows": rows,
    }
    if args.device.startswith("cuda"):
        out["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 1e6, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
