"""The served categories: loading at startup, atomic reloads, and per-category state.

A category is ``loading``, ``ready`` (an inspector serves it) or ``failed`` (its
artifact could not be loaded; it answers 503 while the others keep serving). A
reload loads and warms the artifact now published at ``<root>/<category>`` off the
event loop, then swaps the inspector in one assignment: the batch that is running
finishes on the old one, the next batch uses the new one. A failed reload leaves
the old inspector serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from model.serving import ArtifactError, Inspector, list_categories, read_manifest, validate_category
from service.batching import Batcher
from service.metrics import UNKNOWN_CATEGORY, Metrics
from service.settings import Settings

log = logging.getLogger("service.registry")

State = Literal["loading", "ready", "failed"]


class ReloadError(Exception):
    """A reload did not happen; ``status``/``code`` say how the API should answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Category:
    """One category's live state."""

    name: str
    state: State = "loading"
    inspector: Inspector | None = None
    error: str | None = None  # why it failed to load, or why the last reload failed
    loaded_at: datetime | None = None
    batcher: Batcher | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def artifact_id(self) -> str | None:
        return self.inspector.artifact_id if self.inspector is not None else None


@dataclass
class ReloadOutcome:
    category: str
    artifact_id: str
    previous_artifact_id: str | None
    seconds: float


class Registry:
    """Every category under ``settings.artifacts``, their inspectors and batchers."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.root = Path(settings.artifacts)
        self.metrics = metrics
        self.loading_finished = False
        self._categories: dict[str, Category] = {}
        self._executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor | None:
        """The inference threads (``None`` outside the lifespan)."""
        return self._executor

    # -- lookups (no filesystem) ------------------------------------------------------------

    def get(self, name: str) -> Category | None:
        return self._categories.get(name)

    def all(self) -> list[Category]:
        return [self._categories[n] for n in sorted(self._categories)]

    def metric_label(self, name: str) -> str:
        """``name`` when it is a served category, else a fixed label (bounded cardinality)."""
        return name if name in self._categories else UNKNOWN_CATEGORY

    def is_ready(self) -> bool:
        """Loading finished and at least one category serves."""
        return self.loading_finished and any(c.state == "ready" for c in self._categories.values())

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every published category; a broken one is logged and marked failed."""
        self._executor = ThreadPoolExecutor(self.settings.inference_workers, thread_name_prefix="inference")
        names = await asyncio.to_thread(list_categories, self.root)
        if not names:
            log.warning("no categories found under %s", self.root)
        for name in names:
            self._add(name)
        for name in names:
            await self._load_into(self._categories[name])
        self.loading_finished = True
        ready = sum(c.state == "ready" for c in self._categories.values())
        log.info("serving %d of %d categories from %s", ready, len(names), self.root)

    async def close(self) -> None:
        for category in self._categories.values():
            if category.batcher is not None:
                await category.batcher.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _add(self, name: str) -> Category:
        category = Category(name)
        category.batcher = Batcher(
            name, lambda: category.inspector, self._executor, self.metrics,
            max_batch_size=self.settings.max_batch_size, max_wait_s=self.settings.max_wait_ms / 1000.0,
            max_queue=self.settings.max_queue,
        )
        category.batcher.start()
        self._categories[name] = category
        self.metrics.model_loaded.labels(category=name).set(0)
        return category

    # -- loading and reloading --------------------------------------------------------------

    async def _load_into(self, category: Category) -> Inspector | None:
        """Load, verify and warm ``<root>/<name>``; swap it in on success, record the error otherwise."""
        async with category.lock:
            try:
                inspector = await asyncio.to_thread(self._load_inspector, category.name)
                if self.settings.device == "cuda":
                    await self._warm_up_on_inference_threads(inspector, category.name)
            except Exception as exc:
                category.error = self.public_error(exc)
                log.error("category %s: artifact not loaded: %s", category.name, exc,
                          exc_info=not isinstance(exc, ArtifactError))
                if category.inspector is None:
                    category.state = "failed"
                self.metrics.model_loaded.labels(category=category.name).set(int(category.inspector is not None))
                return None
            previous = category.inspector
            category.inspector = inspector  # the swap: later batches read the new one
            category.state, category.error = "ready", None
            category.loaded_at = datetime.now(timezone.utc)
            self.metrics.model_loaded.labels(category=category.name).set(1)
            log.info("category %s: serving %s (was %s)", category.name, inspector.artifact_id,
                     previous.artifact_id if previous else None)
            return inspector

    def _load_inspector(self, name: str) -> Inspector:
        """Blocking: verify hashes, build the inspector, warm it up."""
        validate_category(name)
        path = self.root / name
        if not path.is_dir():
            raise ArtifactError(f"no artifact published for {name}")
        inspector = Inspector.from_artifact(path, self.settings.device, runtime=self.settings.runtime)
        if self.settings.precision != "fp32":
            inspector.configure_execution(precision=self.settings.precision)
        if inspector.manifest.category != name:
            log.warning("category %s serves an artifact fitted as %r", name, inspector.manifest.category)
        if self.settings.device != "cuda":
            self._warm_up(inspector, name, sorted({1, self.settings.max_batch_size}))
        return inspector

    def _warm_up(self, inspector: Inspector, name: str, batch_sizes: list[int]) -> None:
        """Blocking: run blank batches of ``batch_sizes``; refuse an artifact with non-finite scores."""
        size = inspector.config.image_size
        blank = np.zeros((size, size, 3), dtype=np.uint8)
        for batch in batch_sizes:
            scores = [r.score for r in inspector.inspect([blank] * batch)]
            if not all(math.isfinite(s) for s in scores):
                raise ArtifactError(f"{name}: the artifact produces a non-finite score")

    async def _warm_up_on_inference_threads(self, inspector: Inspector, name: str) -> None:
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
            self._warm_up(inspector, name, sizes)

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, on_one_thread) for _ in range(workers)))

    async def reload(self, name: str) -> ReloadOutcome:
        """Reload one category from ``<root>/<name>``; a new published category is added."""
        category = self._categories.get(name)
        if category is None:
            if not await asyncio.to_thread((self.root / name).is_dir):
                raise ReloadError(404, "unknown_category", f"no category {name!r}")
            category = self._add(name)
        previous = category.artifact_id
        started = time.perf_counter()
        inspector = await self._load_into(category)
        if inspector is None:
            self.metrics.reloads.labels(category=name, result="failed").inc()
            still = f"; still serving {previous}" if category.inspector is not None else ""
            raise ReloadError(409, "reload_failed", f"reload of {name} failed: {category.error}{still}")
        self.metrics.reloads.labels(category=name, result="ok").inc()
        return ReloadOutcome(name, inspector.artifact_id, previous, time.perf_counter() - started)

    async def reload_all(self) -> None:
        """Reload every category whose published artifact changed, and add newly published
        ones (SIGHUP); failures are logged and leave the old artifact serving."""
        names = sorted(set(self._categories) | set(await asyncio.to_thread(list_categories, self.root)))
        log.info("reload requested: checking %d categories", len(names))
        for name in names:
            if await asyncio.to_thread(self._is_current, name):
                continue
            try:
                await self.reload(name)
            except ReloadError as exc:
                log.error("reload of %s: %s", name, exc.message)

    def _is_current(self, name: str) -> bool:
        """Blocking: the published manifest names the artifact already serving."""
        category = self._categories.get(name)
        if category is None or category.inspector is None:
            return False
        try:
            return read_manifest(self.root / name).artifact_id == category.artifact_id
        except ArtifactError:
            return False

    def public_error(self, exc: BaseException) -> str:
        """A load error for API bodies: the artifact problem, without server paths or internals."""
        if not isinstance(exc, ArtifactError):
            return f"artifact could not be loaded ({type(exc).__name__})"
        message = str(exc)
        for prefix in {str(self.root.resolve()), str(self.root)}:
            message = message.replace(prefix + "/", "").replace(prefix, "")
        return message
