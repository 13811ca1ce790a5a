"""The served categories: loading at startup, atomic reloads, and per-category state.

A category is ``loading``, ``ready`` (an inspector serves it), ``failed`` (its
artifact could not be loaded; it answers 503 while the others keep serving) or, when
categories load on demand, ``unloaded`` (published, not loaded in this process). A
reload loads and warms the artifact now published (``<root>/<category>``, or the
bucket's pointer) off the event loop (``service.loading``), then swaps the inspector in
one assignment: the batch that is running finishes on the old one, the next batch uses
the new one. A failed reload leaves the old inspector serving.

**On demand** (the cluster deployment sets ``registry.demand``): start-up lists the
published categories and loads none. Each request holds its category through
``registry.use(category)``, which first awaits ``demand(name)`` (there: Ray Serve's
multiplexed loader, which calls ``load`` and evicts the least recently used category
through ``unload``). ``unload`` waits until no request holds the category, then drops
its inspector, so an eviction never fails a request in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from model.serving import ArtifactError, Inspector, open_source
from service.batching import Batcher
from service.category import Category, State
from service.drift import Baseline, DriftSnapshot, DriftTracker
from service.loading import ArtifactLoader
from service.metrics import UNKNOWN_CATEGORY, Metrics
from service.on_demand import OnDemand
from service.recent import RecentInspections
from service.recent_store import RecentStore
from service.settings import Settings

log = logging.getLogger("service.registry")


class ReloadError(Exception):
    """A reload did not happen; ``status``/``code`` say how the API should answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Registry(OnDemand):
    """Every category under ``settings.artifacts``, their inspectors and batchers."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.source = open_source(settings.artifacts, settings.artifact_cache)
        self.metrics = metrics
        self.loading_finished = False
        self.demand: Callable[[str], Awaitable[object]] | None = None  # set: categories load on demand
        self._loader = ArtifactLoader(settings, self.source)
        self._categories: dict[str, Category] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._recent_store = (RecentStore(settings.recent_dir, settings.recent_dir_per_category)
                              if settings.recent_dir is not None else None)

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

    def drift_snapshots(self) -> list[tuple[str, DriftSnapshot]]:
        """Each serving category's drift statistics, computed now (a scrape or a GET)."""
        return [(c.name, c.drift.snapshot()) for c in self.all() if c.inspector is not None]

    def is_ready(self) -> bool:
        """Loading finished and at least one category serves (on demand: the source was listed)."""
        serving = self.demand is not None or any(c.state == "ready" for c in self._categories.values())
        return self.loading_finished and serving

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every published category (on demand: list them); a broken one is logged and marked failed."""
        self._executor = ThreadPoolExecutor(self.settings.inference_workers, thread_name_prefix="inference")
        names = await asyncio.to_thread(self.source.categories)
        if not names:
            log.warning("no categories found under %s", self.source.location)
        for name in names:
            await self._add(name, "unloaded" if self.demand is not None else "loading")
        if self.demand is None:
            for name in names:
                await self._load_into(self._categories[name])
        self.loading_finished = True
        ready = sum(c.state == "ready" for c in self._categories.values())
        log.info("serving %d of %d categories from %s%s", ready, len(names), self.source.location,
                 " (loaded on demand)" if self.demand is not None else "")

    async def close(self) -> None:
        for category in self._categories.values():
            if category.batcher is not None:
                await category.batcher.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _add(self, name: str, state: State = "loading") -> Category:
        """Register a new category (not loaded yet); its recent list starts from the disk store, if any."""
        category = Category(name, state, drift=DriftTracker(self.settings.drift_window),
                            recent=RecentInspections(name, self.settings.recent_per_category, self._recent_store))
        category.batcher = Batcher(
            name, lambda: category.inspector, self._executor, self.metrics,
            max_batch_size=self.settings.max_batch_size, max_wait_s=self.settings.max_wait_ms / 1000.0,
            max_queue=self.settings.max_queue,
        )
        category.batcher.start()
        self._categories[name] = category
        self.metrics.model_loaded.labels(category=name).set(0)
        try:
            await asyncio.to_thread(category.recent.restore)
        except Exception:  # the page's history is no reason to refuse a category
            log.exception("category %s: recent inspections not restored", name)
        return category

    async def _load_into(self, category: Category) -> Inspector | None:
        """Load ``<root>/<name>``; swap it in on success, record the error otherwise."""
        async with category.lock:
            try:
                inspector = await self._loader.load(category.name, self._executor)
            except Exception as exc:
                category.error = self._loader.public_error(exc)
                log.error("category %s: artifact not loaded: %s", category.name, exc,
                          exc_info=not isinstance(exc, ArtifactError))
                if category.inspector is None:
                    category.state = "failed"
                self.metrics.model_loaded.labels(category=category.name).set(int(category.inspector is not None))
                return None
            previous = category.inspector
            category.inspector = inspector  # the swap: later batches read the new one
            category.drift.reset(Baseline.of(inspector.artifact_id, inspector.manifest))  # a fresh window
            category.state, category.error = "ready", None
            category.loaded_at = datetime.now(timezone.utc)
            self.metrics.model_loaded.labels(category=category.name).set(1)
            log.info("category %s: serving %s (was %s)", category.name, inspector.artifact_id,
                     previous.artifact_id if previous else None)
            return inspector

    # -- reload policy ----------------------------------------------------------------------

    async def reload(self, name: str) -> tuple[str | None, str]:
        """Reload one category from its source; a new published category is added.

        Returns the previous artifact id (``None`` for a new category) and the new one.
        """
        category = self._categories.get(name)
        if category is None:
            if not await asyncio.to_thread(self._published, name):
                raise ReloadError(404, "unknown_category", f"no category {name!r}")
            category = await self._add(name)
        previous = category.artifact_id
        inspector = await self._load_into(category)
        if inspector is None:
            self.metrics.reloads.labels(category=name, result="failed").inc()
            still = f"; still serving {previous}" if category.inspector is not None else ""
            raise ReloadError(409, "reload_failed", f"reload of {name} failed: {category.error}{still}")
        self.metrics.reloads.labels(category=name, result="ok").inc()
        return previous, inspector.artifact_id

    async def reload_all(self) -> None:
        """Reload every category whose published artifact changed, and add newly published
        ones (SIGHUP; on demand: only the categories loaded here, the others load when asked);
        failures are logged and leave the old artifact serving."""
        if self.demand is not None:
            names = sorted(n for n, c in self._categories.items() if c.state != "unloaded")
        else:
            names = sorted(set(self._categories) | set(await asyncio.to_thread(self.source.categories)))
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
            return self.source.published_id(name) == category.artifact_id
        except Exception:  # unreadable now: let the reload say why
            return False

    def _published(self, name: str) -> bool:
        """Blocking: the source has ``name`` (False when it cannot tell)."""
        try:
            return self.source.has(name)
        except Exception as exc:
            log.warning("cannot tell whether %s is published: %s", name, exc)
            return False
