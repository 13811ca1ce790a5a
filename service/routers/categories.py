"""``GET /categories``, ``GET /categories/{category}`` and ``POST /categories/{category}/reload``."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from model.serving import Manifest
from service.category import Category
from service.dependencies import CategoryName, RegistryDep, known_category, require_reload_permission
from service.errors import ApiError, request_id_of
from service.registry import ReloadError
from service.schemas import (
    CategoryDetail,
    CategoryList,
    CategoryStatus,
    DriftReport,
    ErrorBody,
    ManifestSummary,
    ReloadResult,
)

router = APIRouter(prefix="/categories", tags=["categories"])


def category_status(category: Category) -> CategoryStatus:
    return CategoryStatus(name=category.name, state=category.state, artifact_id=category.artifact_id,
                          error=category.error, loaded_at=category.loaded_at)


def manifest_summary(manifest: Manifest) -> ManifestSummary:
    """The manifest's useful facts (no file hashes, no training file names)."""
    config, fit, training = manifest.config, manifest.fit, manifest.training
    return ManifestSummary(
        format_version=manifest.format_version,
        created_at=manifest.created_at,
        backbone_arch=config.backbone.arch,
        backbone_weights=config.backbone.weights,
        image_size=config.image_size,
        blocks=config.blocks(),
        thresholds=manifest.calibration.thresholds,
        bank_size=fit.bank_size,
        n_patches=fit.n_patches,
        fit_seconds=fit.seconds,
        training_images=training.n_images,
        training_fingerprint=training.fingerprint,
        labelled_defects=training.defects.n if training.defects is not None else 0,
        validation=manifest.calibration.validation,
        thresholds_with_defects=manifest.calibration.with_defects,
        versions=manifest.versions,
        holdout_scores=manifest.calibration.holdout_scores,
        scoring=fit.selection,
        image_top_fraction=config.postprocess.image_top_fraction,
        psg_selection=fit.psg_selection,
        defect_head={**fit.head, "shots": asdict(training.defects)} if fit.head and training.defects else fit.head,
        skipped_images=training.skipped,
    )


@router.get("", response_model=CategoryList, summary="Every category and its state")
async def list_categories(registry: RegistryDep) -> CategoryList:
    return CategoryList(categories=[category_status(c) for c in registry.all()])


@router.get(
    "/{category}",
    response_model=CategoryDetail,
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    summary="A category's state, live artifact (manifest summary) and score drift",
)
async def get_category(category: Annotated[Category, Depends(known_category)]) -> CategoryDetail:
    inspector = category.inspector
    summary = manifest_summary(inspector.manifest) if inspector is not None else None
    drift = DriftReport(**asdict(category.drift.snapshot())) if inspector is not None else None
    return CategoryDetail(**category_status(category).model_dump(), manifest=summary, drift=drift)


@router.post(
    "/{category}/reload",
    response_model=ReloadResult,
    responses={s: {"model": ErrorBody} for s in (401, 403, 404, 409, 422)},
    dependencies=[Depends(require_reload_permission)],
    summary="Load the artifact now published at <root>/<category> and swap it in",
    description="Bearer `reload_key` (or `api_key`) when configured; with neither, loopback clients only. "
    "In-flight requests finish on the old artifact. A broken new artifact answers 409 `reload_failed` "
    "and the old one keeps serving.",
)
async def reload_category(request: Request, name: CategoryName, registry: RegistryDep) -> ReloadResult:
    started = time.perf_counter()
    try:
        previous, artifact_id = await registry.reload(name)
    except ReloadError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    return ReloadResult(category=name, artifact_id=artifact_id, previous_artifact_id=previous,
                        seconds=round(time.perf_counter() - started, 3), request_id=request_id_of(request))
