"""``/healthz`` (live), ``/readyz`` (models loaded) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service.dependencies import MetricsDep, RegistryDep
from service.routers.categories import category_status
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: 200 while the process is up")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "loading, or no category serving"}},
    summary="Readiness: 200 once loading finished and at least one category serves",
)
async def readyz(registry: RegistryDep) -> JSONResponse:
    ready = registry.is_ready()
    body = Readiness(
        status="ready" if ready else "not_ready",
        loading_finished=registry.loading_finished,
        categories={c.name: category_status(c) for c in registry.all()},
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    payload, content_type = metrics.render()
    return Response(payload, media_type=content_type)
