"""Batcher with a fake inspector: batch forming, back-pressure, cancellation, reload, stop, failures.

The fake runs on a real executor thread. Each batch it receives is reported on a queue
(the test waits for it there) and, when the fake is gated, holds until the test lets it
finish, so which images share a batch never depends on timing. Image ``i`` is a tiny
array filled with ``i``; the fake answers each with the mark it read and its own name.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import pytest

from service.batching import Batcher, ModelUnavailable, QueueFull, Scored
from service.metrics import Metrics

pytestmark = pytest.mark.anyio

TIMEOUT = 30.0  # generous bound on every wait; reached only when a test is broken
POISON = 250  # a mark that makes the fake raise


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class FakeResult:
    artifact_id: str
    mark: int


class FakeInspector:
    """``inspect(images)`` records the batch, optionally waits for ``release``, answers or raises."""

    def __init__(self, name: str, gated: bool = False) -> None:
        self.name = name
        self.batches: list[list[int]] = []
        self.started: queue.Queue[list[int]] = queue.Queue()
        self._permits = threading.Semaphore(0) if gated else None

    def inspect(self, images: list[np.ndarray]) -> list[FakeResult]:
        marks = [int(image[0, 0, 0]) for image in images]
        self.batches.append(marks)
        self.started.put(marks)
        if self._permits is not None and not self._permits.acquire(timeout=TIMEOUT):
            raise TimeoutError("the test never released this batch")
        if POISON in marks:
            raise RuntimeError("inspector failed")
        return [FakeResult(self.name, mark) for mark in marks]

    def release(self, batches: int = 1) -> None:
        if self._permits is not None:
            self._permits.release(batches)

    async def next_batch(self) -> list[int]:
        """The marks of the next batch that reaches the model (waits for it)."""
        return await asyncio.to_thread(self.started.get, True, TIMEOUT)


def image(mark: int) -> np.ndarray:
    return np.full((2, 2, 3), mark, dtype=np.uint8)


def marks(scored: list[Scored]) -> list[int]:
    return [s.result.mark for s in scored]


@asynccontextmanager
async def running(source: Callable[[], FakeInspector | None], *fakes: FakeInspector,
                  max_batch_size: int = 4, max_wait_s: float = 0.0, max_queue: int = 64) -> AsyncIterator[Batcher]:
    """A started batcher on its own inference thread, for at most ``TIMEOUT`` (a broken batcher fails
    the test instead of hanging it); afterwards every gate opens and the thread ends."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="test-inference")
    batcher = Batcher("cat", source, executor, Metrics(), max_batch_size=max_batch_size, max_wait_s=max_wait_s,
                      max_queue=max_queue)
    batcher.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            yield batcher
    finally:
        await batcher.stop()
        for fake in fakes:
            fake.release(1000)
        await asyncio.to_thread(executor.shutdown, True)


def submit(batcher: Batcher, *marks_: int) -> asyncio.Task[list[Scored]]:
    return asyncio.get_running_loop().create_task(batcher.score([image(m) for m in marks_]))


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` on the event loop, failing after ``TIMEOUT``."""
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.001)


# -- batch forming ----------------------------------------------------------------------------


async def test_waiting_requests_are_batched_up_to_max_batch_size():
    fake = FakeInspector("v1", gated=True)
    async with running(lambda: fake, fake, max_batch_size=4) as batcher:
        first = submit(batcher, 0)
        assert await fake.next_batch() == [0]
        singles = [submit(batcher, m) for m in (1, 2, 3, 4, 5)]
        pair = submit(batcher, 6, 7)
        await until(lambda: batcher.admitted == 8)  # all queued while the model is busy
        fake.release(3)
        results = await asyncio.gather(first, *singles, pair)
        assert fake.batches == [[0], [1, 2, 3, 4], [5, 6, 7]]
        assert [marks(r) for r in results] == [[0], [1], [2], [3], [4], [5], [6, 7]]
        assert [s.batch_size for r in results for s in r] == [1, 4, 4, 4, 4, 3, 3, 3]
        assert all(s.result.artifact_id == "v1" for r in results for s in r)
        assert batcher.admitted == 0


async def test_a_lone_request_waits_for_companions_within_max_wait():
    fake = FakeInspector("v1")
    async with running(lambda: fake, max_batch_size=2, max_wait_s=TIMEOUT) as batcher:
        lone = submit(batcher, 1)
        # The worker has taken the request into its collection window once it has consumed the
        # wake-up that ``score`` set (it clears the event before waiting for companions).
        await until(lambda: batcher.admitted == 1 and not batcher._wakeup.is_set())
        assert not lone.done() and fake.batches == []
        companion = submit(batcher, 2)
        assert marks(await lone) + marks(await companion) == [1, 2]
        assert fake.batches == [[1, 2]]


async def test_a_lone_request_runs_alone_when_max_wait_ends():
    fake = FakeInspector("v1")
    async with running(lambda: fake, max_batch_size=8, max_wait_s=0.01) as batcher:
        async with asyncio.timeout(TIMEOUT):
            scored = await batcher.score([image(3)])
        assert marks(scored) == [3] and scored[0].batch_size == 1 and fake.batches == [[3]]


# -- back-pressure ------------------------------------------------------------------------


async def test_queue_full_is_raised_at_once_and_admission_is_released():
    fake = FakeInspector("v1", gated=True)
    async with running(lambda: fake, fake, max_queue=4) as batcher:
        running_request = submit(batcher, 1, 2, 3)
        await fake.next_batch()
        assert batcher.admitted == 3 and not batcher.has_room(2) and batcher.has_room(1)
        with pytest.raises(QueueFull):
            await batcher.score([image(4), image(5)])
        assert batcher.admitted == 3
        fits = submit(batcher, 6)
        await until(lambda: batcher.admitted == 4)
        fake.release(2)
        assert marks(await running_request) == [1, 2, 3] and marks(await fits) == [6]
        assert batcher.admitted == 0
        assert fake.batches == [[1, 2, 3], [6]]  # the refused images never reached the model


async def test_an_oversized_request_is_admitted_into_an_empty_queue():
    fake = FakeInspector("v1")
    async with running(lambda: fake, max_queue=2, max_batch_size=2) as batcher:
        assert marks(await batcher.score([image(m) for m in (1, 2, 3)])) == [1, 2, 3]
        assert batcher.admitted == 0


async def test_a_cancelled_request_releases_admission_and_never_reaches_the_model():
    fake = FakeInspector("v1", gated=True)
    async with running(lambda: fake, fake) as batcher:
        first = submit(batcher, 1, 2)
        assert await fake.next_batch() == [1, 2]
        gave_up = submit(batcher, 3, 4)
        await until(lambda: batcher.admitted == 4)
        gave_up.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gave_up
        assert batcher.admitted == 2
        fake.release(2)
        assert marks(await first) == [1, 2]
        assert marks(await batcher.score([image(5)])) == [5]
        assert fake.batches == [[1, 2], [5]]
        assert batcher.admitted == 0


async def test_an_inspector_error_fails_only_its_batch():
    fake = FakeInspector("v1", gated=True)
    async with running(lambda: fake, fake, max_batch_size=2) as batcher:
        failing = submit(batcher, POISON, 1)
        assert await fake.next_batch() == [POISON, 1]
        queued = submit(batcher, 2)
        await until(lambda: batcher.admitted == 3)
        fake.release(2)
        with pytest.raises(RuntimeError, match="inspector failed"):
            await failing
        assert marks(await queued) == [2]
        assert batcher.admitted == 0
        assert fake.batches == [[POISON, 1], [2]]


# -- reload and stop --------------------------------------------------------------------------


async def test_a_new_inspector_applies_from_the_next_batch():
    old, new = FakeInspector("v1", gated=True), FakeInspector("v2")
    live = [old]
    async with running(lambda: live[0], old) as batcher:
        before = submit(batcher, 1)
        assert await old.next_batch() == [1]
        live[0] = new  # the reload's swap, while the old inspector is busy
        after = submit(batcher, 2)
        await until(lambda: batcher.admitted == 2)
        old.release()
        assert [s.result.artifact_id for s in await before] == ["v1"]
        assert [s.result.artifact_id for s in await after] == ["v2"]
        assert old.batches == [[1]] and new.batches == [[2]]


async def test_no_inspector_fails_the_batch_with_model_unavailable():
    fake = FakeInspector("v1")
    live: list[FakeInspector | None] = [None]
    async with running(lambda: live[0]) as batcher:
        with pytest.raises(ModelUnavailable):
            await batcher.score([image(1)])
        live[0] = fake
        assert marks(await batcher.score([image(2)])) == [2]
        assert fake.batches == [[2]] and batcher.admitted == 0


async def test_stop_fails_running_and_waiting_requests():
    fake = FakeInspector("v1", gated=True)
    async with running(lambda: fake, fake) as batcher:
        in_model = submit(batcher, 1)
        assert await fake.next_batch() == [1]
        waiting = submit(batcher, 2)
        await until(lambda: batcher.admitted == 2)
        await batcher.stop()
        for task in (in_model, waiting):
            with pytest.raises(ModelUnavailable):
                await task
        assert batcher.admitted == 0
        with pytest.raises(ModelUnavailable):
            await batcher.score([image(3)])
        assert fake.batches == [[1]]
