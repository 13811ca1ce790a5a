"""Scoring decoded images of one request through the category's batcher, for every API.

``POST /inspect/{category}`` and the Open Inference Protocol's ``infer`` share this hop:
queue the images, wait for their results, the request's deadline or the client leaving,
and turn the batcher's refusals into API errors (503 ``overloaded`` with Retry-After,
503 ``artifact_unavailable``, 504 ``deadline_exceeded``). ``record_drift`` feeds each
scored image into the category's drift window.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from starlette.requests import Request

from service.batching import ModelUnavailable, QueueFull, Scored
from service.errors import ApiError, request_id_of
from service.registry import Category

log = logging.getLogger("service.scoring")


async def score_images(
    request: Request, category: Category, images: list[np.ndarray], remaining: float, retry_after: int
) -> list[Scored] | None:
    """Queue the images and wait for their results, the deadline or the client leaving (-> None)."""
    if remaining <= 0:
        raise ApiError(504, "deadline_exceeded", "request deadline exceeded before inference")
    work = asyncio.ensure_future(category.batcher.score(images))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({work, gone}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancel(work, gone)
    if work in done:
        try:
            return work.result()
        except QueueFull as exc:
            raise overloaded(category, retry_after) from exc
        except ModelUnavailable as exc:
            raise ApiError(503, "artifact_unavailable", f"category {category.name} is not serving") from exc
    if gone in done:
        log.info("request %s: client disconnected before its result", request_id_of(request))
        return None
    raise ApiError(504, "deadline_exceeded", "request deadline exceeded while waiting for inference")


def overloaded(category: Category, retry_after: int) -> ApiError:
    return ApiError(503, "overloaded", f"server busy: the queue for {category.name} is full; retry later",
                    {"Retry-After": str(retry_after)})


def record_drift(category: Category, scored: list[tuple[float, str]]) -> None:
    """Each image's raw score (with the artifact id that scored it) into the category's drift
    window (O(1) per score; statistics are computed on GET or scrape). Results of a previous
    artifact (a reload in flight) are dropped."""
    for artifact_id in {a for _, a in scored}:
        category.drift.record([s for s, a in scored if a == artifact_id], artifact_id)


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _cancel(*tasks: asyncio.Future) -> None:
    """Cancel unfinished tasks and wait for them, so their ``finally`` blocks have run."""
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
