"""One served category's live state: its inspector, batcher, drift window, recent list, and the
requests holding it (``service.registry`` keeps them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from model.serving import Inspector
from service.batching import Batcher
from service.drift import DriftTracker
from service.recent import RecentInspections

State = Literal["loading", "ready", "failed", "unloaded"]


@dataclass
class Category:
    """One category's live state."""

    name: str
    state: State = "loading"
    inspector: Inspector | None = None
    error: str | None = None  # why it failed to load, or why the last reload failed
    loaded_at: datetime | None = None
    batcher: Batcher | None = None
    drift: DriftTracker = field(default_factory=DriftTracker)  # recent scores of the live artifact
    recent: RecentInspections = field(default_factory=lambda: RecentInspections("", 0))  # for the page
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # requests holding it (``Registry.use``)
    released: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def artifact_id(self) -> str | None:
        return self.inspector.artifact_id if self.inspector is not None else None

    @asynccontextmanager
    async def held(self) -> AsyncIterator[Category]:
        self.users += 1
        try:
            yield self
        finally:
            self.users -= 1
            async with self.released:
                self.released.notify_all()

    async def wait_unused(self) -> None:
        async with self.released:
            await self.released.wait_for(lambda: self.users == 0)
