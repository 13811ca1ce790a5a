"""How the model path executes on a device: stage timing, precision, CUDA graphs and the
copy of results back to the host. Used by the Inspector; nothing here knows the method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext

import numpy as np
import torch

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_GRAPH_BATCH = 64  # larger batches run eagerly: launch overhead is small next to their work


class Timer:
    """Stage wall times in ms; synchronises CUDA so a stage's time is its own."""

    def __init__(self, device: torch.device, on_stage: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.ms: dict[str, float] = {}
        self.on_stage = on_stage  # told each stage's name as it starts (a job's progress)

    @contextmanager
    def stage(self, name: str):
        if self.on_stage is not None:
            self.on_stage(name)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0


def check_precision(precision: str, device: torch.device, runtime: str) -> torch.dtype:
    """The backbone dtype for ``precision``; reduced precision needs the torch runtime on CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    if precision != "fp32" and (device.type != "cuda" or runtime != "torch"):
        raise ValueError(f"precision {precision} needs the torch runtime on a CUDA device")
    return PRECISIONS[precision]


class GraphedMaps:
    """CUDA-graph replays of ``fn: x [B, 3, S, S] -> maps [B, S, S]``, one graph per input
    shape and dtype, captured at first use. All graphs share one memory pool: they replay
    one at a time and each output is copied out before the next replay.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """Warm up on a side stream (cuDNN autotuning, lazy init), then capture ``fn`` on ``x``'s shape."""
        static_in = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.fn(static_in)
        log.info("captured a CUDA graph for input %s %s", tuple(x.shape), x.dtype)
        return graph, static_in, static_out


def no_stage(name: str) -> AbstractContextManager:
    return nullcontext()


def to_host(t: torch.Tensor) -> np.ndarray:
    """``t`` as a numpy array. From CUDA it lands in pinned memory in one DMA (a pageable
    copy hit page faults: 10 ms for 64 maps); the array keeps that block until it is freed."""
    if t.device.type != "cuda":
        return t.numpy()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host.numpy()


