"""Typed FastAPI dependencies: settings, registry, metrics, the inspect pipeline, updates, auth, category lookup."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from pydantic import SecretStr

from model.serving import validate_category
from service.category import Category
from service.errors import ApiError
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.registry import Registry
from service.settings import Settings
from service.updates import Updates


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_registry(request: Request) -> Registry:
    return request.app.state.registry


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def get_updates(request: Request) -> Updates:
    return request.app.state.updates


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
UpdatesDep = Annotated[Updates, Depends(get_updates)]


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check_bearer(request: Request, key: SecretStr) -> None:
    token = _bearer_token(request)
    if token is None or not hmac.compare_digest(token.encode(), key.get_secret_value().encode()):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """When ``api_key`` is configured, the request must carry ``Authorization: Bearer <api_key>``."""
    if settings.api_key is not None:
        _check_bearer(request, settings.api_key)


def require_reload_permission(request: Request, settings: SettingsDep) -> None:
    """Reload needs ``reload_key`` (else ``api_key``) as bearer; with neither configured,
    only loopback clients (127.0.0.0/8, ::1) may reload."""
    key = settings.reload_key or settings.api_key
    if key is not None:
        _check_bearer(request, key)
    elif not is_loopback(request.client.host if request.client else None):
        raise ApiError(403, "forbidden", "reload is allowed from loopback only unless a reload key is configured")


def category_name(category: Annotated[str, Path(description="category name, e.g. bottle")]) -> str:
    """The path's category name, validated before any lookup (422 ``invalid_category``)."""
    try:
        return validate_category(category)
    except ValueError as exc:
        raise ApiError(422, "invalid_category", str(exc)[:200]) from exc


CategoryName = Annotated[str, Depends(category_name)]


async def known_category(name: CategoryName, registry: RegistryDep) -> Category:
    """The served category (404 ``unknown_category``); touches no file (on demand: asks the
    artifact source about a name published since start-up)."""
    category = await registry.find(name)
    if category is None:
        raise ApiError(404, "unknown_category", f"no category {name!r}")
    return category


async def serving_category(
    category: Annotated[Category, Depends(known_category)], registry: RegistryDep
) -> AsyncIterator[Category]:
    """A category with a live inspector (503 ``artifact_unavailable`` otherwise), held for the
    request (loaded first when categories load on demand; not evicted while held)."""
    async with registry.use(category):
        if category.inspector is None or category.batcher is None:
            detail = f": {category.error}" if category.error else ""
            raise ApiError(503, "artifact_unavailable",
                           f"category {category.name} is not serving ({category.state}){detail}",
                           {"Retry-After": "30"})
        yield category
