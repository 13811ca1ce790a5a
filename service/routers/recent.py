"""``GET /categories/{category}/recent``: the last inspections of a category, for the page's recent panel."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.category import Category
from service.dependencies import known_category, require_api_key
from service.recent_entry import RecentEntry
from service.schemas import ErrorBody, RecentItem, RecentList

router = APIRouter(prefix="/categories", tags=["categories"])


def recent_item(entry: RecentEntry) -> RecentItem:
    width, height = entry.size or (None, None)
    return RecentItem(time=entry.time, filename=entry.filename, score=entry.score, threshold=entry.threshold,
                      is_anomalous=entry.is_anomalous, regions=entry.regions, artifact_id=entry.artifact_id,
                      request_id=entry.request_id, thumbnail=base64.b64encode(entry.thumbnail).decode("ascii"),
                      width=width, height=height)


@router.get(
    "/{category}/recent",
    response_model=RecentList,
    responses={s: {"model": ErrorBody} for s in (401, 404, 422)},
    dependencies=[Depends(require_api_key)],
    summary="The last inspections of a category, newest first, with thumbnails",
    description="Kept in server memory, at most `recent_per_category` per category (what-if re-asks, "
    "`record=false`, are not kept). Bearer `api_key` when configured: thumbnails show the parts.",
)
async def list_recent(
    category: Annotated[Category, Depends(known_category)],
    limit: Annotated[int | None, Query(ge=1, le=1000, description="at most this many (default: all kept)")] = None,
) -> RecentList:
    items = [recent_item(e) for e in category.recent.latest(limit)]
    return RecentList(category=category.name, limit=category.recent.limit, items=items)
