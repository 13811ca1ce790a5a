"""KServe Open Inference Protocol v2 (REST): health, model metadata and readiness, ``infer``.

Each category is a model named after it; its version is the live artifact id. ``infer``
scores through the same batcher, Inspector and verdict as ``POST /inspect`` (tensor
codec: ``service.oip``). Errors keep the house shape, whose ``error`` field is the
protocol's.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service import oip
from service.category import Category
from service.dependencies import (
    PipelineDep,
    RegistryDep,
    SettingsDep,
    known_category,
    require_api_key,
    serving_category,
)
from service.pipeline import Decision, Intake
from service.schemas import ErrorBody
from service.uploads import CLIENT_CLOSED

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
    pipeline: PipelineDep,
) -> Response:
    names = oip.requested_outputs(body)
    tensor = body.inputs[0]
    intake = Intake(oip.input_count(tensor, settings), functools.partial(oip.images_of, tensor, settings))
    inspection = await pipeline.run(request, category, intake, Decision(oip.threshold_override(body), max_regions=0),
                                    lambda _, verdict: oip.image_outputs(names, verdict))
    if inspection is None:
        return Response(status_code=CLIENT_CLOSED)
    outputs = await asyncio.to_thread(oip.output_tensors, names, [i.verdict for i in inspection.images],
                                      [i.rendered for i in inspection.images])
    answer = {"model_name": category.name, "model_version": inspection.images[0].result.artifact_id,
              "id": body.id or inspection.request_id,
              "parameters": {"pixel_threshold": inspection.images[0].verdict.pixel_threshold}, "outputs": outputs}
    return JSONResponse(answer)
