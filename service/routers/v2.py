"""KServe Open Inference Protocol v2 (REST): health, model metadata and readiness, ``infer``.

Each category is a model named after it; its version is the live artifact id. ``infer``
scores through the same batcher, Inspector and verdict as ``POST /inspect`` (tensor
codec: ``service.oip``). Errors keep the house shape, whose ``error`` field is the
protocol's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from model.serving import NonFiniteResult
from service import oip
from service.dependencies import MetricsDep, RegistryDep, SettingsDep, known_category, require_api_key, serving_category
from service.errors import ApiError, request_id_of
from service.registry import Category
from service.schemas import ErrorBody
from service.scoring import overloaded, record_drift, score_images
from service.uploads import CLIENT_CLOSED, decode_all

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
PLATFORM = "factory-inspect_pytorch"
_ERRORS = {s: {"model": ErrorBody} for s in (400, 401, 404, 413, 415, 422, 500, 503, 504)}


@router.get("", summary="Server metadata")
async def server_metadata() -> dict:
    return {"name": "factory-inspect", "version": "1.0", "extensions": []}


@router.get("/health/live", summary="Server liveness: 200 while the process is up")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness: 200 once categories serve (as /readyz)")
async def ready(registry: RegistryDep) -> JSONResponse:
    is_ready = registry.is_ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{category}", responses=_ERRORS, summary="Model metadata: the live artifact as the version")
async def model_metadata(category: Annotated[Category, Depends(serving_category)]) -> dict:
    inputs, outputs = oip.metadata_tensors()
    return {"name": category.name, "versions": [category.artifact_id], "platform": PLATFORM,
            "inputs": inputs, "outputs": outputs}


@router.get("/models/{category}/ready", responses={404: {"model": ErrorBody}},
            summary="Model readiness: 200 when the category serves (loaded first on demand), else 503")
async def model_ready(category: Annotated[Category, Depends(known_category)], registry: RegistryDep) -> JSONResponse:
    async with registry.use(category):
        is_ready = category.inspector is not None
    return JSONResponse({"name": category.name, "ready": is_ready}, status_code=200 if is_ready else 503)


@router.post("/models/{category}/infer", responses=_ERRORS, dependencies=[Depends(require_api_key)],
             summary="Score an image tensor (UINT8 [H,W,3] / [N,H,W,3]) or encoded images (BYTES [N], base64)")
async def infer(
    body: oip.InferenceRequest,
    request: Request,
    category: Annotated[Category, Depends(serving_category)],
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Response:
    names = oip.requested_outputs(body)
    threshold = oip.threshold_override(body)
    images = await asyncio.to_thread(_images, body.inputs[0], settings)
    if not category.batcher.has_room(len(images)):
        raise overloaded(category, settings.retry_after_s)
    remaining = settings.request_timeout_s - (time.perf_counter() - request.state.t0)
    scored = await score_images(request, category, images, remaining, settings.retry_after_s)
    if scored is None:
        return Response(status_code=CLIENT_CLOSED)
    try:
        verdicts = await asyncio.to_thread(
            lambda: [s.result.verdict(i.shape[:2], threshold, 0) for i, s in zip(images, scored, strict=True)])
    except NonFiniteResult:
        raise ApiError(500, "internal_error", "internal server error") from None
    outputs = await asyncio.to_thread(oip.output_tensors, names, verdicts)
    metrics.observe_images(category.name, len(verdicts))
    metrics.observe_verdicts(category.name, [v.is_anomalous for v in verdicts])
    record_drift(category, [(s.result.score, s.result.artifact_id) for s in scored])
    answer = {"model_name": category.name, "model_version": scored[0].result.artifact_id,
              "id": body.id or request_id_of(request), "parameters": {"pixel_threshold": verdicts[0].pixel_threshold},
              "outputs": outputs}
    return JSONResponse(answer)


def _images(tensor: oip.Tensor, settings) -> list:
    """Blocking: the input tensor's RGB images (BYTES decoded by the ``/inspect`` decoder)."""
    if tensor.name != oip.INPUT_NAME:
        raise oip.bad(f"unknown input {tensor.name!r}: the model's input is {oip.INPUT_NAME!r}")
    if tensor.datatype == "UINT8":
        return oip.pixel_images(tensor, settings)
    if tensor.datatype == "BYTES":
        return decode_all(oip.byte_uploads(tensor, settings), settings.max_pixels, settings.max_request_pixels)[0]
    raise oip.bad(f"input datatype {tensor.datatype!r} not accepted: UINT8 pixels or BYTES encoded images")
