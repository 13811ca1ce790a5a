"""Categories loaded on demand (the registry side of the cluster's multiplexing), without Ray:
a least-recently-used loader with one slot, as Ray Serve's ``@serve.multiplexed`` behaves."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import Metrics
from service.registry import Registry
from service.settings import Settings
from tests.test_api import test_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class OneSlot:
    """An LRU of one category: loading another first unloads the held one (as Ray Serve does)."""

    def __init__(self, registry: Registry) -> None:
        self.registry, self.held = registry, OrderedDict()
        self.loads: list[str] = []

    async def __call__(self, name: str) -> None:
        if name in self.held:
            return
        while self.held:
            evicted, _ = self.held.popitem(last=False)
            await self.registry.unload(evicted)
        await self.registry.load(name)
        self.held[name] = True
        self.loads.append(name)


def on_demand_app(root):
    app = create_app(Settings(artifacts=root, torch_threads=1))
    app.state.registry.demand = OneSlot(app.state.registry)
    return app


def test_categories_load_when_asked_and_one_slot_evicts(tiny_artifacts, tiny_data):
    png = test_images(tiny_data)[0].read_bytes()
    app = on_demand_app(tiny_artifacts)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200  # listed, nothing loaded
        states = {c["name"]: c["state"] for c in client.get("/categories").json()["categories"]}
        assert states == {"alpha": "unloaded", "beta": "unloaded"}
        scores = {}
        for name in ("alpha", "beta", "alpha", "beta"):
            r = client.post(f"/inspect/{name}", files={"file": ("a.png", png, "image/png")}, params={"outputs": "none"})
            assert r.status_code == 200, r.text
            scores.setdefault(name, set()).add(round(r.json()["score"], 6))
        assert all(len(s) == 1 for s in scores.values())  # a reload of the same artifact scores the same
        assert app.state.registry.demand.loads == ["alpha", "beta", "alpha", "beta"]
        states = {c["name"]: c["state"] for c in client.get("/categories").json()["categories"]}
        assert states == {"alpha": "unloaded", "beta": "ready"}
        assert client.get("/v2/models/alpha/ready").json() == {"name": "alpha", "ready": True}
        assert 'inspect_model_loaded{category="beta"} 0.0' in client.get("/metrics").text


def test_unload_waits_for_the_requests_holding_the_category(tiny_artifacts):
    async def scenario() -> None:
        registry = Registry(Settings(artifacts=tiny_artifacts, torch_threads=1), Metrics())
        registry.demand = registry.load
        await registry.start()
        try:
            category = await registry.find("alpha")
            waiting, wait_unused = asyncio.Event(), category.wait_unused

            async def reached_the_wait() -> None:
                waiting.set()
                await wait_unused()

            category.wait_unused = reached_the_wait
            async with registry.use(category):
                unload = asyncio.create_task(registry.unload("alpha"))
                await asyncio.wait_for(waiting.wait(), timeout=60)  # the unload now waits for the holder
                assert not unload.done() and category.inspector is not None
                image = np.zeros((64, 64, 3), np.uint8)
                assert len(await category.batcher.score([image])) == 1  # still serving while held
            await asyncio.wait_for(unload, timeout=60)
            assert category.inspector is None and category.state == "unloaded"
        finally:
            await registry.close()

    asyncio.run(scenario())


def test_a_category_published_after_start_is_found_on_demand(tiny_artifacts, tmp_path):
    import shutil

    root = tmp_path / "arts"
    root.mkdir()
    app = on_demand_app(root)
    with TestClient(app) as client:
        assert client.get("/categories").json()["categories"] == []
        assert client.get("/v2/models/alpha/ready").status_code == 404
        shutil.copytree((tiny_artifacts / "alpha").resolve(), root / "alpha")
        assert client.get("/v2/models/alpha/ready").json()["ready"] is True
