"""``POST /inspect/{category}``: score one or several images."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from model.serving import NonFiniteResult
from service.batching import Scored
from service.dependencies import MetricsDep, SettingsDep, require_api_key, serving_category
from service.errors import ApiError, request_id_of
from service.metrics import Metrics
from service.registry import Category
from service.rendering import RenderOptions, encode_images, parse_outputs
from service.schemas import BatchResult, ErrorBody, ImageResult
from service.scoring import overloaded, record_drift, score_images
from service.uploads import CLIENT_CLOSED, Upload, decode_all, read_uploads

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


def render_options(
    settings: SettingsDep,
    threshold: Annotated[float | None, Query(gt=0, allow_inf_nan=False,
                                             description="image threshold override for this request")] = None,
    outputs: Annotated[str, Query(max_length=64, description="comma list of heatmap, mask, overlay, map; or none")]
    = "heatmap,mask",
    pixel_threshold: Annotated[float | None, Query(gt=0, allow_inf_nan=False,
                                                   description="mask (pixel) threshold override for this request")]
    = None,
) -> RenderOptions:
    try:
        chosen = parse_outputs(outputs)
    except ValueError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from exc
    return RenderOptions(chosen, threshold, pixel_threshold, settings.max_regions, settings.png_compression)


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
    options: Annotated[RenderOptions, Depends(render_options)],
    settings: SettingsDep,
    metrics: MetricsDep,
    record: Annotated[bool, Query(description="false: a what-if re-ask of images already inspected (the page's "
                                              "threshold slider): not added to the recent list, the drift window "
                                              "or the verdict counters")] = True,
) -> Response:
    rid = request_id_of(request)
    t0 = request.state.t0
    started = time.perf_counter()
    try:  # the deadline covers the upload too: a slow sender cannot hold a connection forever
        uploads = await asyncio.wait_for(read_uploads(request, settings.max_images_per_request),
                                         timeout=settings.request_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, "deadline_exceeded", "request deadline exceeded while reading the body") from None
    read_ms = (time.perf_counter() - started) * 1000.0
    if not category.batcher.has_room(len(uploads.items)):  # fail fast, before decoding
        raise overloaded(category, settings.retry_after_s)
    images, decode_ms = await asyncio.to_thread(
        decode_all, uploads.items, settings.max_pixels, settings.max_request_pixels
    )
    remaining = settings.request_timeout_s - (time.perf_counter() - t0)
    scored = await score_images(request, category, images, remaining, settings.retry_after_s)
    if scored is None:
        return Response(status_code=CLIENT_CLOSED)
    rendered = await asyncio.to_thread(_render_all, images, scored, options, rid)
    stages = _Stages(read_ms, decode_ms, [e for _, e in rendered], (time.perf_counter() - t0) * 1000.0)
    results = [
        _image_result(category.name, upload, s, fields, rid, stages.of_image(i, s))
        for i, (upload, s, (fields, _)) in enumerate(zip(uploads.items, scored, rendered, strict=True))
    ]
    _observe(metrics, category.name, results, stages, record)
    if record:
        record_drift(category, [(r.score, r.artifact_id) for r in results])
        await _record_recent(category, images, results)
    if not uploads.batch:
        return _json(results[0])
    return _json(_build(BatchResult, category=category.name, artifact_id=results[0].artifact_id,
                        count=len(results), results=results, timings_ms=stages.of_request(scored), request_id=rid))


@dataclass
class _Stages:
    """Server-side stage times of one request, in ms."""

    read: float
    decode: list[float]  # per image
    encode: list[float]  # per image
    total: float

    def of_image(self, index: int, s: Scored) -> dict[str, float]:
        """read, decode, queue, the inference stages of its batch, inference, encode, total."""
        return _rounded({"read": self.read, "decode": self.decode[index], "queue": s.queue_ms,
                         **s.result.timings_ms, "inference": s.inference_ms, "encode": self.encode[index],
                         "total": self.total})

    def of_request(self, scored: list[Scored]) -> dict[str, float]:
        return _rounded({"read": self.read, "decode": sum(self.decode), "queue": max(s.queue_ms for s in scored),
                         "encode": sum(self.encode), "total": self.total})


def _render_all(
    images: list[np.ndarray], scored: list[Scored], options: RenderOptions, rid: str
) -> list[tuple[dict, float]]:
    try:
        return [_render(image, s, options) for image, s in zip(images, scored, strict=True)]
    except NonFiniteResult as exc:
        log.error("request %s: %s", rid, exc)
        raise ApiError(500, "internal_error", "internal server error") from None


def _render(image: np.ndarray, s: Scored, options: RenderOptions) -> tuple[dict, float]:
    """One image's response fields (without ids and timings) and the encode time in ms: the
    verdict at the input's size, then its PNGs."""
    started = time.perf_counter()
    verdict = s.result.verdict(image.shape[:2], options.threshold, options.max_regions, options.pixel_threshold)
    vmax = 2.0 * s.result.thresholds.image  # the fixed colour range of this artifact
    fields = {
        "width": verdict.width, "height": verdict.height, "score": verdict.score,
        "normalized_score": verdict.normalized_score, "threshold": verdict.threshold,
        "pixel_threshold": verdict.pixel_threshold, "is_anomalous": verdict.is_anomalous,
        "regions": verdict.regions, "heatmap_max": vmax,
        **encode_images(image, verdict, vmax, options),
    }
    return fields, (time.perf_counter() - started) * 1000.0


def _image_result(category: str, upload: Upload, s: Scored, fields: dict, rid: str, timings: dict) -> ImageResult:
    return _build(ImageResult, category=category, filename=upload.filename, batch_size=s.batch_size,
                  timings_ms=timings, artifact_id=s.result.artifact_id, request_id=rid, **fields)


def _build(model, **fields):
    """Build a response model; a NaN/Inf anywhere is an internal error, logged, never sent."""
    try:
        return model(**fields)
    except ValidationError as exc:
        log.error("request %s: invalid %s (non-finite value?): %s", fields.get("request_id"), model.__name__, exc)
        raise ApiError(500, "internal_error", "internal server error") from None


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in timings.items()}


def _json(model: ImageResult | BatchResult) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


async def _record_recent(category: Category, images: list[np.ndarray], results: list[ImageResult]) -> None:
    """Each image's result and thumbnail into the category's recent list (and its disk store, if any),
    in a worker thread. A failure here is logged and never fails the inspection."""
    if not category.recent.enabled:
        return
    try:
        await asyncio.to_thread(category.recent.record, images, results)
    except Exception:
        log.exception("request %s: recent inspections of %s not recorded", results[0].request_id, category.name)


def _observe(metrics: Metrics, category: str, results: list[ImageResult], stages: _Stages, verdicts: bool) -> None:
    """Images scored, verdict counters (unless a what-if re-ask) and one observation per stage (the
    batch stages of the first image)."""
    metrics.observe_images(category, len(results))
    if verdicts:
        metrics.observe_verdicts(category, [r.is_anomalous for r in results])
    per_stage = {k: v for k, v in results[0].timings_ms.items() if k not in ("decode", "encode")}
    per_stage.update(decode=sum(stages.decode), encode=sum(stages.encode))
    metrics.observe_stages(per_stage)
