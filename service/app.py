"""The app factory: ``create_app(settings)`` builds the FastAPI app around the model library.

The lifespan loads every category under ``settings.artifacts`` (a broken one is
reported, never fatal), starts one batcher per category and installs a SIGHUP
handler that reloads all categories.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from model.serving import allow_decoding_up_to, configure_device, set_torch_threads
from service.errors import install_error_handlers
from service.feedback import FeedbackStore
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.pipeline import Pipeline
from service.registry import Registry
from service.routers import categories, feedback, health, inspect, page, recent, v2
from service.settings import Settings
from service.updates import Updates

log = logging.getLogger("service.app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app with its own registry and metrics (nothing global is shared between apps)."""
    settings = settings or Settings()
    metrics = Metrics()
    registry = Registry(settings, metrics)
    app = FastAPI(
        title="factory-inspect",
        summary="Visual inspection: anomaly score, verdict, heatmap, mask and regions per image.",
        version="1.0",
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.pipeline = Pipeline(settings, metrics)
    store = FeedbackStore(settings.feedback_root, settings.feedback_per_category) if settings.feedback_root else None
    app.state.updates = Updates(registry, store, settings.device)
    metrics.track_drift(registry.drift_snapshots)
    install_error_handlers(app)
    # Added innermost first: the request context wraps the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, category_label=registry.metric_label)
    app.include_router(inspect.router)
    app.include_router(categories.router)
    app.include_router(feedback.router)
    app.include_router(recent.router)
    app.include_router(health.router)
    app.include_router(page.router)
    app.include_router(v2.router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the categories, serve, then stop the batchers and the inference threads."""
    settings: Settings = app.state.settings
    registry: Registry = app.state.registry
    previous_threads = set_torch_threads(settings.torch_threads)
    configure_device(settings.device)
    allow_decoding_up_to(settings.max_pixels)
    app.state.metrics.track_gpu_memory(settings.device)
    uninstall = lambda: None  # noqa: E731
    poller = None
    try:
        await registry.start()
        if settings.reload_on_sighup:
            uninstall = install_sighup_reload(registry)
        if settings.reload_poll_s > 0:
            poller = asyncio.create_task(poll_published(registry, settings.reload_poll_s), name="reload-poll")
        yield
    finally:
        if poller is not None:
            poller.cancel()
        uninstall()
        await app.state.updates.close()
        await registry.close()
        if settings.torch_threads:
            set_torch_threads(previous_threads)


async def poll_published(registry: Registry, interval_s: float) -> None:
    """Reload every category whose published version changed, every ``interval_s`` (until cancelled)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await registry.reload_all()
        except Exception:  # a bucket that does not answer now: try again next time
            log.exception("polling the published versions")


def install_sighup_reload(registry: Registry) -> Callable[[], None]:
    """SIGHUP -> ``registry.reload_all()`` on the event loop; returns the uninstaller.

    The signal handler only hands over with ``loop.call_soon_threadsafe``; the reload
    runs as a task. Signal handlers need the main thread: elsewhere (test clients)
    nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        log.debug("SIGHUP reload not installed (not the main thread)")
        return lambda: None
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def start_reload() -> None:
        task = loop.create_task(registry.reload_all(), name="sighup-reload")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_sighup(signum, frame) -> None:
        loop.call_soon_threadsafe(start_reload)

    def uninstall() -> None:
        signal.signal(signal.SIGHUP, previous)
        for task in list(tasks):  # shutting down: a reload in progress is abandoned
            task.cancel()

    previous = signal.signal(signal.SIGHUP, on_sighup)
    log.info("SIGHUP reloads every category")
    return uninstall
