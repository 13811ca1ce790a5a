"""Dynamic batching: concurrent requests for one category share one ``inspect`` call.

Each image of a request becomes a ``WorkItem`` with its own future. One worker task
per category waits for the first item, collects more for up to ``max_wait_s`` (or
until ``max_batch_size``), then runs ``inspector.inspect(batch)`` on an executor
thread, so the event loop never blocks. Images already waiting when a batch finishes
are taken at once.

Back-pressure: at most ``max_queue`` images per category are admitted (queued or
running); beyond that ``QueueFull`` is raised at once (the API answers 503). The
admission is released in a ``finally``, so a timed-out, disconnected or failed
request never leaks a slot. Items whose request gave up are skipped before they
reach the model.

The inspector is read from ``inspector_source`` at the start of every batch: a reload
swaps it for later batches while the running batch finishes on the old one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from model.serving import InspectionResult, Inspector
from service.metrics import Metrics

log = logging.getLogger("service.batching")


class QueueFull(Exception):
    """The category's queue cannot admit more images now."""


class ModelUnavailable(Exception):
    """No inspector is serving the category (it failed to load)."""


@dataclass
class Scored:
    """One image's result and how it was produced."""

    result: InspectionResult  # carries the artifact id and thresholds of the inspector that scored it
    queue_ms: float  # enqueued -> its batch started
    inference_ms: float  # wall time of the batch's inspect call, thread hand-off included
    batch_size: int


@dataclass
class WorkItem:
    image: np.ndarray  # RGB uint8 [H, W, 3]
    future: asyncio.Future[Scored]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue, collect and score the images of one category."""

    def __init__(
        self,
        category: str,
        inspector_source: Callable[[], Inspector | None],
        executor: Executor,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
    ) -> None:
        self.category = category
        self._source = inspector_source
        self._executor = executor
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._pending: deque[WorkItem] = deque()
        self._wakeup = asyncio.Event()
        self._admitted = 0
        self._task: asyncio.Task | None = None

    @property
    def admitted(self) -> int:
        """Images admitted and not yet released (queued or running)."""
        return self._admitted

    def has_room(self, n: int) -> bool:
        """Whether ``n`` more images would be admitted now."""
        return not self._admitted or self._admitted + n <= self.max_queue

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.category}")

    async def stop(self) -> None:
        """Stop the worker; waiting requests get ``ModelUnavailable``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(ModelUnavailable(self.category))

    async def score(self, images: Sequence[np.ndarray]) -> list[Scored]:
        """Admit and score ``images``; raises ``QueueFull`` at once when full (``admission``)."""
        with self.admission(len(images)):
            return await self.enqueue(images)

    async def enqueue(self, images: Sequence[np.ndarray]) -> list[Scored]:
        """Score ``images`` already admitted (inside ``admission``), possibly across several batches.

        Cancelling the caller (deadline, disconnect) drops its items that have not run.
        """
        loop = asyncio.get_running_loop()
        items = [WorkItem(image, loop.create_future()) for image in images]
        self._pending.extend(items)
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:
                if not item.future.done():
                    item.future.cancel()

    @contextmanager
    def admission(self, n: int) -> Iterator[None]:
        """Hold ``n`` of the queue's places for the block: a request takes them before it decodes
        its images and gives them back when its images are scored, failed or abandoned. Raises
        ``QueueFull`` at once when they are not free, ``ModelUnavailable`` when the batcher stopped."""
        if self._task is None:
            raise ModelUnavailable(self.category)
        if not self.has_room(n):
            raise QueueFull(f"{self._admitted} images already queued for {self.category}")
        self._admitted += n
        self._metrics.queue_depth.labels(category=self.category).set(self._admitted)
        try:
            yield
        finally:
            self._admitted -= n
            self._metrics.queue_depth.labels(category=self.category).set(self._admitted)

    def _live(self) -> int:
        return sum(1 for item in self._pending if not item.future.done())

    async def _next_batch(self) -> list[WorkItem]:
        """Wait for a first item, then up to ``max_wait_s`` for a full batch."""
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        until = loop.time() + self.max_wait_s
        while self._live() < self.max_batch_size and (remaining := until - loop.time()) > 0:
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                break
        batch: list[WorkItem] = []
        while self._pending and len(batch) < self.max_batch_size:
            item = self._pending.popleft()
            if not item.future.done():  # its request gave up (deadline, disconnect)
                batch.append(item)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                try:
                    await self._run_batch(batch)
                except asyncio.CancelledError:
                    _fail(batch, ModelUnavailable(self.category))
                    raise
                except Exception as exc:  # never let the worker die
                    log.exception("batch for %s failed", self.category)
                    _fail(batch, exc)

    async def _run_batch(self, batch: list[WorkItem]) -> None:
        inspector = self._source()
        if inspector is None:
            _fail(batch, ModelUnavailable(self.category))
            return
        started = time.perf_counter()
        images = [item.image for item in batch]
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, inspector.inspect, images)
        inference_ms = (time.perf_counter() - started) * 1000.0
        self._metrics.batch_size.observe(len(batch))
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                queue_ms = (started - item.enqueued) * 1000.0
                item.future.set_result(Scored(result, queue_ms, inference_ms, len(batch)))


def _fail(batch: list[WorkItem], exc: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)
