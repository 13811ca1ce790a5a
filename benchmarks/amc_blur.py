"""AMC's final-map blur: the two matrix products (``amc.blur_matrix``) against the two 1-D
reflect-padded convolutions they replaced, in one run, per map size and batch; then a grid
map's upsampling and blur done at grid resolution (``upsample_smooth``) against upsampling it
to full size and blurring that.

    PYTHONPATH=. .venv/bin/python benchmarks/amc_blur.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from model.method.amc import AnomalyMapCombiner, gaussian_kernel1d


def convolutions(m: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The blur as it was: reflect pad and a 1-D convolution along each axis."""
    r = kernel.numel() // 2
    m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(m, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1))


def seconds(f, x: torch.Tensor, repeats: int) -> float:
    f(x)
    start = time.perf_counter()
    for _ in range(repeats):
        f(x)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--cases", default="256x1,256x32,512x8,1024x2,2048x1", help="SIZExBATCH, comma separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernel = gaussian_kernel1d(args.sigma)
    print("| size | batch | convolutions ms | matrix products ms | speed-up | max abs difference |")
    print("|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        size, batch = (int(v) for v in case.split("x"))
        x = torch.rand(batch, 1, size, size)
        combiner = AnomalyMapCombiner(size, args.sigma)
        repeats = max(3, 2_000_000 // (size * size * batch))
        old, new = seconds(lambda m: convolutions(m, kernel), x, repeats), seconds(combiner.smooth, x, repeats)
        diff = float((combiner.smooth(x) - convolutions(x, kernel)).abs().max())
        print(f"| {size} | {batch} | {old * 1e3:.2f} | {new * 1e3:.2f} | {old / new:.1f}x | {diff:.1e} |", flush=True)
    print("\n| size | grid | batch | upsample, then blur ms | at grid resolution ms | speed-up | max abs difference |")
    print("|---|---|---|---|---|---|---|")
    for size, grid, batch in ((256, 32, 1), (256, 32, 32), (512, 64, 8)):
        m, combiner = torch.rand(batch, grid, grid), AnomalyMapCombiner(size, args.sigma)
        repeats = max(3, 2_000_000 // (size * size * batch))
        full = seconds(lambda g: combiner.smooth(combiner.upsample(g)), m, repeats)
        fused = seconds(combiner.upsample_smooth, m, repeats)
        diff = float((combiner.upsample_smooth(m) - combiner.smooth(combiner.upsample(m))).abs().max())
        print(f"| {size} | {grid} | {batch} | {full * 1e3:.3f} | {fused * 1e3:.3f} | {full / fused:.1f}x | {diff:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
