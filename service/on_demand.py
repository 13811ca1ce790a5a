"""The registry's on-demand half: categories loaded when a request asks, evicted when unused.

In cluster mode (``cluster.deployment``) ``Registry.demand`` is Ray Serve's multiplexed loader:
``use`` awaits it before a request holds its category; the loader calls ``load``, and evicts
the least recently used category through ``unload``, which waits until no request holds that
category before dropping its inspector. ``find`` also answers for a category published after
start-up (one look at the artifact source). Without ``demand`` (the single-process server)
``use`` only holds the category and ``find`` touches nothing.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from model.serving import Inspector
from service.category import Category, State
from service.metrics import Metrics

log = logging.getLogger("service.registry")


class OnDemand(ABC):
    """The on-demand half of ``Registry``, written against the four hooks below, which it implements."""

    demand: Callable[[str], Awaitable[object]] | None
    metrics: Metrics

    @abstractmethod
    def get(self, name: str) -> Category | None:
        """The registered category ``name`` (no filesystem)."""

    @abstractmethod
    async def _add(self, name: str, state: State) -> Category:
        """Register a new category, not loaded yet."""

    @abstractmethod
    async def _load_into(self, category: Category) -> Inspector | None:
        """Load the category's published artifact and swap it in (None on failure, recorded on it)."""

    @abstractmethod
    def _published(self, name: str) -> bool:
        """Blocking: whether the artifact source has ``name``."""

    async def find(self, name: str) -> Category | None:
        """``get``, and on demand also a category published since start-up (one look at the source)."""
        category = self.get(name)
        if category is None and self.demand is not None and await asyncio.to_thread(self._published, name):
            category = self.get(name) or await self._add(name, "unloaded")
        return category

    @asynccontextmanager
    async def use(self, category: Category) -> AsyncIterator[Category]:
        """Hold ``category`` for one request (loaded first when categories load on demand)."""
        if self.demand is not None:
            await self.demand(category.name)
        async with category.held():
            yield category

    async def load(self, name: str) -> Category:
        """Load ``name`` now (on demand); a failure leaves it ``failed`` (503) until a reload."""
        category = self.get(name) or await self._add(name, "loading")
        if category.inspector is None:
            await self._load_into(category)
        return category

    async def unload(self, name: str) -> None:
        """Evict ``name``: once no request holds it, drop its inspector."""
        category = self.get(name)
        if category is None:
            return
        await category.wait_unused()
        async with category.lock:
            category.inspector, category.state, category.error = None, "unloaded", None
            self.metrics.model_loaded.labels(category=name).set(0)
        log.info("category %s: unloaded", name)
