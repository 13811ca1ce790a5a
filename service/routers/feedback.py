"""The line teaches the model: ``POST/GET /categories/{c}/feedback``, ``POST/GET .../update``,
``POST .../rollback``, ``GET .../versions``. Every POST needs the reload key (or loopback)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from model.serving import ArtifactError, Manifest, version_manifest
from service.category import Category
from service.dependencies import SettingsDep, UpdatesDep, known_category, require_reload_permission
from service.errors import ApiError, request_id_of
from service.feedback_input import read_feedback
from service.feedback_schemas import (
    FeedbackItem,
    FeedbackResult,
    PendingFeedback,
    RollbackResult,
    UpdateStatus,
    VersionRecord,
)
from service.schemas import ErrorBody
from service.settings import Settings

router = APIRouter(prefix="/categories", tags=["line feedback"])
ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 403, 404, 409, 413, 415, 422, 503, 507)}
GUARDED = [Depends(require_reload_permission)]
KnownCategory = Annotated[Category, Depends(known_category)]


def _live(category: Category) -> Manifest:
    if category.inspector is None or category.inspector.manifest is None:
        raise ApiError(503, "model_unavailable", f"{category.name} has no loaded version: {category.error}")
    return category.inspector.manifest


@router.post("/{category}/feedback", response_model=FeedbackResult, responses=ERRORS, dependencies=GUARDED,
             summary="Confirm a recent inspection (request_id) or uploaded images as good or defective")
async def add_feedback(request: Request, category: KnownCategory, updates: UpdatesDep,
                       settings: SettingsDep) -> FeedbackResult:
    store = updates.store()
    manifest = _live(category)
    form = await read_feedback(request, manifest, category.recent, settings.max_pixels)
    learned = set(manifest.training.sha256) | set(manifest.training.defect_hashes)
    added = []
    for item in form.items:
        record = await asyncio.to_thread(store.add, category.name, item.image, form.label, learned,
                                         form.defect_type, item.mask, item.request_id, item.filename)
        added.append(FeedbackItem(**asdict(record)))
    pending = await asyncio.to_thread(store.pending, category.name)
    return FeedbackResult(category=category.name, added=added, pending=len(pending),
                          request_id=request_id_of(request))


@router.get("/{category}/feedback", response_model=PendingFeedback, responses=ERRORS,
            summary="The confirmations waiting for an update")
async def list_feedback(category: KnownCategory, updates: UpdatesDep) -> PendingFeedback:
    store = updates.store()
    pending = await asyncio.to_thread(store.pending, category.name)
    return PendingFeedback(category=category.name, pending=len(pending), limit=store.limit,
                           items=[FeedbackItem(**asdict(c)) for c in reversed(pending[-100:])])


@router.post("/{category}/update", status_code=202, response_model=UpdateStatus, responses=ERRORS,
             dependencies=GUARDED, summary="Learn the waiting confirmations into a new version, in the background")
async def start_update(category: KnownCategory, updates: UpdatesDep) -> UpdateStatus:
    job = await updates.start(category.name)
    return UpdateStatus(**asdict(job))


@router.get("/{category}/update", response_model=UpdateStatus, responses=ERRORS,
            summary="The latest update of this category and its stage")
async def update_status(category: KnownCategory, updates: UpdatesDep) -> UpdateStatus:
    job = updates.status(category.name)
    if job is None:
        raise ApiError(404, "no_update", f"no update of {category.name} since the server started")
    return UpdateStatus(**asdict(job))


@router.post("/{category}/rollback", response_model=RollbackResult, responses=ERRORS, dependencies=GUARDED,
             summary="Return to the version the live one was updated from, and swap it in")
async def rollback_category(request: Request, category: KnownCategory, updates: UpdatesDep) -> RollbackResult:
    left, live = await updates.rollback(category.name)
    return RollbackResult(category=category.name, left=left, artifact_id=live, request_id=request_id_of(request))


@router.get("/{category}/versions", response_model=list[VersionRecord], responses=ERRORS,
            summary="The live version and the ones it came from (as far as they are kept), newest first")
async def versions(category: KnownCategory, settings: SettingsDep) -> list[VersionRecord]:
    return await asyncio.to_thread(lineage, _live(category), settings)


def lineage(manifest: Manifest, settings: Settings) -> list[VersionRecord]:
    """Blocking: ``manifest``'s version record, then its parent's, while the parent is kept locally."""
    out = []
    while True:
        m, lin = manifest, manifest.lineage
        out.append(VersionRecord(
            artifact_id=m.artifact_id, created_at=m.created_at, parent=lin.parent if lin else None,
            added_goods=len(lin.added_goods) if lin else m.training.n_images,
            added_defects=len(lin.added_defects) if lin else len(m.training.defect_hashes),
            held_out=lin.held_out if lin else m.training.n_holdout, scoring=m.config.scoring if lin is None else
            lin.chosen, parent_scoring=lin.parent_chosen if lin else None, notes=list(lin.notes) if lin else []))
        if lin is None or isinstance(settings.artifacts, str) or len(out) >= 10:
            return out
        try:
            manifest = version_manifest(settings.artifacts, lin.parent)
        except (ArtifactError, ValueError):
            return out
