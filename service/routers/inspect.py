"""``POST /inspect/{category}``: score one or several images."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from model.serving import Verdict
from service.category import Category
from service.dependencies import PipelineDep, SettingsDep, require_api_key, serving_category
from service.errors import ApiError
from service.pipeline import Decision, Inspected, Intake
from service.rendering import RenderOptions, encode_images, parse_outputs
from service.schemas import BatchResult, ErrorBody, ImageResult
from service.uploads import CLIENT_CLOSED, decode_all, read_uploads

log = logging.getLogger("service.inspect")

router = APIRouter(tags=["inspect"])


_ERRORS = {
    s: {"model": ErrorBody, "description": d}
    for s, d in {
        400: "invalid_image, invalid_multipart",
        401: "unauthorized (api_key configured)",
        404: "unknown_category",
        413: "payload_too_large, image_too_large, too_many_images",
        415: "unsupported_format, unsupported_media_type",
        422: "invalid_category, missing_file, empty_file, empty_body, validation_error, invalid_parameter",
        500: "internal_error",
        503: "artifact_unavailable; overloaded (with Retry-After)",
        504: "deadline_exceeded",
    }.items()
}

_IMAGE_TYPES = ["image/png", "image/jpeg", "image/bmp", "image/tiff"]
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "one image"},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": "several images (answer: BatchResult)"},
                    },
                }
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in _IMAGE_TYPES},
        },
    }
}


def decision(
    settings: SettingsDep,
    threshold: Annotated[float | None, Query(gt=0, allow_inf_nan=False,
                                             description="image threshold override for this request")] = None,
    pixel_threshold: Annotated[float | None, Query(gt=0, allow_inf_nan=False,
                                                   description="mask (pixel) threshold override for this request")]
    = None,
) -> Decision:
    return Decision(threshold, pixel_threshold, settings.max_regions)


def render_options(
    settings: SettingsDep,
    outputs: Annotated[str, Query(max_length=64, description="comma list of heatmap, mask, overlay, map; or none")]
    = "heatmap,mask",
) -> RenderOptions:
    try:
        chosen = parse_outputs(outputs)
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from exc
    return RenderOptions(chosen, settings.png_compression)


@router.post(
    "/inspect/{category}",
    response_model=ImageResult | BatchResult,
    responses=_ERRORS,
    openapi_extra=_REQUEST_BODY,
    dependencies=[Depends(require_api_key)],
    summary="Score images of a category",
    description="One image as multipart `file` or a raw `image/*` body answers an `ImageResult`; "
    "several as multipart `files` answer a `BatchResult`. Concurrent requests are batched.",
)
async def inspect_images(
    request: Request,
    category: Annotated[Category, Depends(serving_category)],
    decide: Annotated[Decision, Depends(decision)],
    options: Annotated[RenderOptions, Depends(render_options)],
    settings: SettingsDep,
    pipeline: PipelineDep,
    record: Annotated[bool, Query(description="false: a what-if re-ask of images already inspected (the page's "
                                              "threshold slider): not added to the recent list, the drift window "
                                              "or the verdict counters")] = True,
) -> Response:
    started = time.perf_counter()
    try:  # the deadline covers the upload too: a slow sender cannot hold a connection forever
        uploads = await asyncio.wait_for(read_uploads(request, settings.max_images_per_request),
                                         timeout=settings.request_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, "deadline_exceeded", "request deadline exceeded while reading the body") from None
    intake = Intake(len(uploads.items),
                    functools.partial(decode_all, uploads.items, settings.max_pixels, settings.max_request_pixels),
                    [u.filename for u in uploads.items], (time.perf_counter() - started) * 1000.0)
    inspection = await pipeline.run(request, category, intake, decide,
                                    functools.partial(_rendered, options=options), record)
    if inspection is None:
        return Response(status_code=CLIENT_CLOSED)
    results = [_image_result(category.name, i, inspection.request_id) for i in inspection.images]
    if not uploads.batch:
        return _json(results[0])
    return _json(_build(BatchResult, category=category.name, artifact_id=results[0].artifact_id,
                        count=len(results), results=results, timings_ms=inspection.timings_ms,
                        request_id=inspection.request_id))


def _rendered(image: np.ndarray, verdict: Verdict, options: RenderOptions) -> dict:
    """Blocking: one image's response fields but its ids and timings."""
    return {"width": verdict.width, "height": verdict.height, "score": verdict.score,
            "normalized_score": verdict.normalized_score, "threshold": verdict.threshold,
            "pixel_threshold": verdict.pixel_threshold, "is_anomalous": verdict.is_anomalous,
            "regions": verdict.regions, "heatmap_max": verdict.heatmap_max,
            **encode_images(image, verdict, options)}


def _image_result(category: str, inspected: Inspected[dict], rid: str) -> ImageResult:
    return _build(ImageResult, category=category, filename=inspected.filename,
                  batch_size=inspected.result.batch_size, timings_ms=inspected.timings_ms,
                  artifact_id=inspected.result.artifact_id, request_id=rid, **inspected.rendered)


def _build(model, **fields):
    """Build a response model; a NaN/Inf anywhere is an internal error, logged, never sent."""
    try:
        return model(**fields)
    except ValidationError as exc:
        log.error("request %s: invalid %s (non-finite value?): %s", fields.get("request_id"), model.__name__, exc)
        raise ApiError(500, "internal_error", "internal server error") from None


def _json(model: ImageResult | BatchResult) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")
