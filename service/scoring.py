"""The inspect pipeline's batcher hop (``service.pipeline``): queue a request's admitted images,
wait for their results, the request's deadline or the client leaving, and the API errors of the
batcher's refusals (503 ``overloaded`` with Retry-After, 503 ``artifact_unavailable``, 504
``deadline_exceeded``).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from starlette.requests import Request

from service.batching import ModelUnavailable, Scored
from service.category import Category
from service.errors import ApiError, request_id_of

log = logging.getLogger("service.scoring")


async def score_images(request: Request, category: Category, images: list[np.ndarray],
                       remaining: float) -> list[Scored] | None:
    """Queue the images (admitted already) and wait for their results, the deadline or the client
    leaving (-> None)."""
    if remaining <= 0:
        raise ApiError(504, "deadline_exceeded", "request deadline exceeded before inference")
    work = asyncio.ensure_future(category.batcher.enqueue(images))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({work, gone}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancel(work, gone)
    if work in done:
        try:
            return work.result()
        except ModelUnavailable as exc:
            raise artifact_unavailable(category) from exc
    if gone in done:
        log.info("request %s: client disconnected before its result", request_id_of(request))
        return None
    raise ApiError(504, "deadline_exceeded", "request deadline exceeded while waiting for inference")


def overloaded(category: Category, retry_after: int) -> ApiError:
    return ApiError(503, "overloaded", f"server busy: the queue for {category.name} is full; retry later",
                    {"Retry-After": str(retry_after)})


def artifact_unavailable(category: Category) -> ApiError:
    return ApiError(503, "artifact_unavailable", f"category {category.name} is not serving")


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
