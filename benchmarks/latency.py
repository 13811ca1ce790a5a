"""Model-path latency per stage and throughput per batch size, on CPU or CUDA.

    .venv/bin/python benchmarks/latency.py --device cpu --threads 2 --images ../shared/data/mvtec_ad/bottle/test/good
    python3 benchmarks/latency.py --device cuda --weights random          # on a GPU machine
    python3 benchmarks/latency.py --device cuda --weights random --variants fp32,fp32+eager,bf16,fp16

The model is fitted first (on ``--data``, or a generated category when absent); speed does
not depend on weight values, so ``--weights random`` is fine for timing. Images are decoded
beforehand: the figures cover preprocess (resize + normalise) through the final map.

On CUDA each ``--variants`` entry is a precision (fp32, bf16, fp16) with optional flags:
``+eager`` (no CUDA graphs: per-stage times), ``+nchw`` (no channels_last), ``+compile``
(experiment: the feature path through ``torch.compile``, inductor kernels, then graphed).
"""

from __future__ import annotations

import argparse
import gc
import json
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
from model.runtime.process import configure_device  # noqa: E402


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


def parse_variant(text: str) -> tuple[dict, bool]:
    """``"bf16+eager+nchw"`` -> (``Inspector.configure_execution`` keyword arguments, compile or not)."""
    precision, *flags = text.split("+")
    unknown = set(flags) - {"eager", "nchw", "compile"}
    if unknown:
        raise SystemExit(f"unknown variant flags {sorted(unknown)} in {text!r}")
    options = {"precision": precision, "cuda_graphs": "eager" not in flags, "channels_last": "nchw" not in flags}
    return options, "compile" in flags


def time_variant(inspector: Inspector, variant: str, images: list[np.ndarray], batches: list[int],
                 seconds: float) -> dict:
    """Rows of ``time_batches`` for one execution variant, with its peak GPU memory."""
    options, compiled = parse_variant(variant)
    inspector.configure_execution(**options)
    if compiled:
        inspector.features = torch.compile(inspector.features, dynamic=False)
    cuda = inspector.device.type == "cuda"
    if cuda:
        gc.collect()  # the previous variant's graphs and their memory pool
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out = {"variant": variant, "rows": [time_batches(inspector, images, b, seconds) for b in batches]}
    if cuda:
        out["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 1e6, 1)
    return out


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
    p.add_argument("--variants", default="fp32", help="comma-separated, e.g. fp32,fp32+eager,bf16 (see module doc)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune its convolution algorithms")
    p.add_argument("--out")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    configure_device(args.device)  # TF32 off on CUDA, as the server does at start-up
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
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
    batches = [int(b) for b in args.batch_sizes.split(",")]
    variants = [time_variant(inspector, v, images, batches, args.seconds) for v in args.variants.split(",")]
    out = {
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "threads": args.threads,
        "config": overrides,
        "input": f"{images[0].shape[1]}x{images[0].shape[0]}",
        "fit_seconds": round(fit_s, 1),
        "cudnn_benchmark": args.cudnn_benchmark,
        "variants": variants,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    print(summary(out))


def summary(out: dict) -> str:
    """One line per variant and batch size: p50/p95 ms, images/s, stage p50s, peak memory."""
    lines = [f"{out['device']}, input {out['input']}, cudnn.benchmark={out['cudnn_benchmark']}"]
    for v in out["variants"]:
        for r in v["rows"]:
            stages = " ".join(f"{k}={ms}" for k, ms in r["stage_ms_p50"].items())
            lines.append(f"{v['variant']:>14} b{r['batch']:<3} p50 {r['ms_per_call_p50']:8.3f} "
                         f"p95 {r['ms_per_call_p95']:8.3f} ms {r['images_per_s']:8.1f} img/s | {stages}")
        if "gpu_peak_memory_mb" in v:
            lines.append(f"{v['variant']:>14} peak GPU memory {v['gpu_peak_memory_mb']} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
