"""Loading one category's artifact: the published version becomes a verified, warmed Inspector.

The artifact source (``settings.artifacts``: a local root, or ``s3://bucket/prefix`` whose
versions are fetched, verified and cached) gives a local folder; ``Inspector.from_artifact``
checks every file's SHA-256 before any tensor is read. The
inspector is then warmed up with blank batches: on CPU once (batch sizes 1 and
``max_batch_size``), on CUDA for every batch size on every inference thread. An
artifact whose warm-up scores are not finite is refused. ``public_error`` turns a load
error into text for API bodies, without server paths.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from concurrent.futures import Executor

import numpy as np

from model.serving import ArtifactError, ArtifactSource, Inspector, open_source
from service.settings import Settings

log = logging.getLogger("service.loading")


class ArtifactLoader:
    """Builds the inspector of a category from the artifact published under ``settings.artifacts``."""

    def __init__(self, settings: Settings, source: ArtifactSource | None = None) -> None:
        self.settings = settings
        self.source = source or open_source(settings.artifacts, settings.artifact_cache)

    async def load(self, name: str, executor: Executor | None) -> Inspector:
        """Load, verify and warm ``<root>/<name>`` off the event loop (``executor``: the inference threads)."""
        inspector = await asyncio.to_thread(self.load_blocking, name)
        if self.settings.device == "cuda":
            await self._warm_up_on_inference_threads(inspector, name, executor)
        return inspector

    def load_blocking(self, name: str) -> Inspector:
        """Blocking: fetch (remote) and verify hashes, build the inspector, warm it up (off CUDA)."""
        path = self.source.fetch(name)
        inspector = Inspector.from_artifact(path, self.settings.device, runtime=self.settings.runtime)
        if self.settings.precision != "fp32":
            inspector.configure_execution(precision=self.settings.precision)
        if inspector.manifest.category != name:
            log.warning("category %s serves an artifact fitted as %r", name, inspector.manifest.category)
        if self.settings.device != "cuda":
            warm_up(inspector, name, sorted({1, self.settings.max_batch_size}))
        return inspector

    async def _warm_up_on_inference_threads(self, inspector: Inspector, name: str, executor: Executor | None) -> None:
        """CUDA: warm every batch size 1..max_batch_size on every inference thread.

        Measured on an H100: the first call of each new (thread, batch size) pair costs
        2-3 s (cuDNN builds its plans per handle, and handles are per thread). Doing it
        here keeps that off the first requests. Shapes seen before are cheap, so a
        reload of a same-architecture artifact warms in milliseconds.
        """
        workers = self.settings.inference_workers
        barrier = threading.Barrier(workers)
        sizes = list(range(1, self.settings.max_batch_size + 1))

        def on_one_thread() -> None:
            try:
                barrier.wait(timeout=60)  # one task per worker thread
            except threading.BrokenBarrierError:
                pass
            warm_up(inspector, name, sizes)

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(executor, on_one_thread) for _ in range(workers)))

    def public_error(self, exc: BaseException) -> str:
        """A load error for API bodies: the artifact problem, without server paths or internals."""
        if not isinstance(exc, ArtifactError):
            return f"artifact could not be loaded ({type(exc).__name__})"
        message = str(exc)
        # Longest first: a relative root ("artifacts") is a suffix of the resolved one.
        roots = self.source.local_roots()
        for prefix in sorted({str(r.resolve()) for r in roots} | {str(r) for r in roots}, key=len, reverse=True):
            message = message.replace(prefix + "/", "").replace(prefix, "")
        return message


def warm_up(inspector: Inspector, name: str, batch_sizes: list[int]) -> None:
    """Blocking: run blank batches of ``batch_sizes``; refuse an artifact with non-finite scores."""
    size = inspector.config.image_size
    blank = np.zeros((size, size, 3), dtype=np.uint8)
    for batch in batch_sizes:
        scores = [r.score for r in inspector.inspect([blank] * batch)]
        if not all(math.isfinite(s) for s in scores):
            raise ArtifactError(f"{name}: the artifact produces a non-finite score")
