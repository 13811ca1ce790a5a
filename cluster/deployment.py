"""The Ray Serve application: the server's own FastAPI app on every replica, categories
multiplexed across replicas.

Each replica builds the ordinary app (``service.app.create_app``) as its ``@serve.ingress``:
the same routers, batcher, Inspector and verdict as ``factory-inspect serve``. Its registry
loads categories on demand (``Registry.demand``): the first request for a category on a
replica loads it through Ray Serve's ``@serve.multiplexed`` loader, which keeps at most
``max_categories_per_replica`` per replica and evicts the least recently used one (the
registry drops its inspector once no request holds it). A request that carries the header
``serve_multiplexed_model_id: <category>`` is routed by Ray Serve to a replica that already
holds that category; without it any replica serves it, loading it if needed.

Dynamic batching is the server's own ``Batcher`` per category. Replicas autoscale on
ongoing requests (``autoscaling_config``, overridable per deployment in a Serve config).
A changed ``user_config`` (``{"reload": <anything new>}``) reconfigures every replica in
place: each reloads the categories it holds whose published version changed, swapping
inspectors between batches, so no request is dropped.

``build_app(args)`` is the Serve application builder (``import_path:
cluster.deployment:build_app``); ``args`` are ``ClusterArgs``. ``serve_config`` writes the
Serve config (``ServeDeploySchema``) that ``factory-inspect cluster deploy`` applies and that
the KubeRay ``RayService`` carries as ``serveConfigV2``: Serve derives the application's code
version from ``import_path`` and ``args``, so a config that changes only ``user_config``
reconfigures the running replicas instead of replacing them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("cluster.deployment")

DEPLOYMENT = "Inspect"
DEFAULT_AUTOSCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}


class ClusterArgs(BaseModel):
    """The application's arguments (``args`` of the Serve config)."""

    model_config = ConfigDict(extra="forbid")
    artifacts: str = Field(description="s3://bucket/prefix (or a folder every node shares)")
    artifact_cache: str | None = Field(None, description="local cache of fetched artifacts on each node")
    max_categories_per_replica: int = Field(4, ge=1, description="categories loaded per replica; LRU beyond")
    settings: dict[str, Any] = Field(default_factory=dict, description="other server settings (service.settings)")
    num_replicas: int | None = Field(None, ge=1, description="fixed replica count (default: autoscaling)")
    autoscaling: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_AUTOSCALING))
    replica_cpus: float = Field(1.0, ge=0)
    replica_gpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int = Field(32, ge=1)

    def server_settings(self) -> dict[str, Any]:
        # Replicas notice a version published elsewhere (an update, a rollback) within reload_poll_s.
        base = {"artifacts": self.artifacts, "artifact_cache": self.artifact_cache, "reload_on_sighup": False,
                "reload_poll_s": 10.0}
        if self.replica_gpus > 0:
            base["device"] = "cuda"
        return {**base, **self.settings}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:12]


class HeldCategory:
    """What the multiplexed loader caches for one category; eviction unloads it."""

    def __init__(self, registry, name: str) -> None:
        self.registry, self.name = registry, name
        self.loop = asyncio.get_running_loop()
        self.unloaded = False

    def __del__(self) -> None:
        """Ray Serve calls this off the event loop when it evicts the category: wait for the
        registry to unload it (after the requests holding it finish). At garbage collection
        it does nothing more."""
        if self.unloaded or self.loop.is_closed():
            return
        self.unloaded = True
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self.loop.create_task(self.registry.unload(self.name))
        else:
            asyncio.run_coroutine_threadsafe(self.registry.unload(self.name), self.loop).result()


class ReplicaHeader:
    """Names the replica that answered in an ``X-Replica`` header (which one holds what)."""

    def __init__(self, app, replica: str) -> None:
        self.app, self.header = app, (b"x-replica", replica.encode())

    async def __call__(self, scope, receive, send) -> None:
        async def send_named(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_named if scope["type"] == "http" else send)


def inspect_deployment(max_categories: int):
    """The deployment class, with the multiplexing bound ``max_categories`` fixed."""
    from ray import serve

    from service.app import create_app
    from service.settings import Settings

    @serve.deployment(name=DEPLOYMENT, max_ongoing_requests=32, graceful_shutdown_timeout_s=30,
                      ray_actor_options={"num_cpus": 1})
    @serve.ingress()
    class InspectDeployment:
        def __init__(self, settings: dict[str, Any]) -> None:
            self.settings = Settings(**settings)
            self.registry = None

        async def __serve_build_asgi_app__(self):
            app = create_app(self.settings)
            self.registry = app.state.registry
            self.registry.demand = self.category  # the lifespan then lists categories, loads none
            app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
            return app

        @serve.multiplexed(max_num_models_per_replica=max_categories)
        async def category(self, name: str) -> HeldCategory:
            await self.registry.load(name)
            return HeldCategory(self.registry, name)

        async def reconfigure(self, user_config: dict[str, Any]) -> None:
            if self.registry is not None and self.registry.loading_finished:
                log.info("reconfigured (%s): reloading changed categories", user_config)
                await self.registry.reload_all()

    return InspectDeployment


def build_app(args: dict[str, Any]):
    """The Serve application builder (``import_path: cluster.deployment:build_app``)."""
    parsed = ClusterArgs(**args)
    options: dict[str, Any] = {
        "user_config": {"reload": "0"},
        "max_ongoing_requests": parsed.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": parsed.replica_cpus, "num_gpus": parsed.replica_gpus},
    }
    if parsed.num_replicas is not None:
        options["num_replicas"] = parsed.num_replicas
    else:
        options["autoscaling_config"] = parsed.autoscaling
    return inspect_deployment(parsed.max_categories_per_replica).options(**options).bind(parsed.server_settings())


def serve_config(args: ClusterArgs, reload: str = "0", http: dict[str, Any] | None = None,
                 app_name: str = "factory-inspect") -> dict[str, Any]:
    """The Serve config of the application (a ``ServeDeploySchema`` document); ``reload``
    goes into the deployment's ``user_config``, ``http`` into ``http_options``."""
    config: dict[str, Any] = {
        "proxy_location": "HeadOnly",
        "applications": [{
            "name": app_name,
            "route_prefix": "/",
            "import_path": "cluster.deployment:build_app",
            "args": args.model_dump(),
            "deployments": [{"name": DEPLOYMENT, "user_config": {"reload": reload}}],
        }],
    }
    if http:
        config["http_options"] = http
    return config
