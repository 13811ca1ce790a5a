"""Where device preprocessing spends its time: host staging (one thread / ``stage``), upload, resize, normalise.

    PYTHONPATH=. python3 benchmarks/gpu_preprocess.py --batch-sizes 1,32,128

Each part is timed alone (CUDA-synchronised, median of repeats) on 900x900 RGB images.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.runtime.imageio import normalize, resize_on_device, stage  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def median_ms(fn: Callable[[], object], repeats: int = 30) -> float:
    """Median wall time of ``fn`` in ms, synchronised, after 3 warm-ups."""
    times = []
    for i in range(repeats + 3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if i >= 3:
            times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def parts(batch: int, size: int, side: int) -> dict[str, float]:
    """ms of each preprocessing part for ``batch`` images ``[side, side, 3]``."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(batch)]
    pinned = torch.empty((batch, side, side, 3), dtype=torch.uint8, pin_memory=True)
    pageable = torch.from_numpy(np.stack(images))
    on_device = pinned.cuda()
    resized = resize_on_device(on_device, size)
    out = {
        "stack_into_pinned": median_ms(lambda: np.stack(images, out=pinned.numpy())),
        "stage_threaded": median_ms(lambda: stage(images, pinned.numpy())),
        "upload_pinned": median_ms(lambda: pinned.to("cuda", non_blocking=True)),
        "upload_pageable": median_ms(lambda: pageable.to("cuda")),
        "resize": median_ms(lambda: resize_on_device(on_device, size)),
        "normalize": median_ms(lambda: normalize(resized.div(255.0), MEAN, STD)),
    }
    out["upload_pinned_gb_per_s"] = round(pinned.numel() / out["upload_pinned"] / 1e6, 1)
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch-sizes", default="1,32,128")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--side", type=int, default=900)
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    for b in args.batch_sizes.split(","):
        print(f"b{b}", parts(int(b), args.size, args.side))


if __name__ == "__main__":
    main()
