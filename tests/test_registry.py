"""Registry over a real artifacts root: start-up, per-category failure, reloads, metric labels, close."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from model.jobs.fit import fit
from model.serving import read_manifest
from service.batching import ModelUnavailable
from service.metrics import UNKNOWN_CATEGORY, Metrics
from service.registry import Registry, ReloadError
from service.settings import Settings
from tests.conftest import tiny_config

pytestmark = pytest.mark.anyio

TIMEOUT = 120.0  # generous bound on a test's body (fits included); reached only when something hangs


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def root(tiny_artifacts, tmp_path) -> Path:
    """A copy of the tiny artifacts root that a test may change (relative version links kept)."""
    return Path(shutil.copytree(tiny_artifacts, tmp_path / "arts", symlinks=True))


@asynccontextmanager
async def started(root: Path, **settings) -> AsyncIterator[Registry]:
    """A started registry, for at most ``TIMEOUT`` (a hang fails the test), closed afterwards."""
    registry = Registry(Settings(artifacts=root, **settings), Metrics())
    await registry.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            yield registry
    finally:
        await registry.close()


def tamper(root: Path, category: str, name: str = "backbone.safetensors") -> None:
    """Flip one byte of a published artifact file (the hash check must catch it)."""
    path = (root / category).resolve() / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


async def publish(data: Path, root: Path, category: str, seed: int) -> str:
    """Fit and publish a new version of ``category`` (off the event loop); its artifact id."""
    await asyncio.to_thread(fit, data, category, root, tiny_config(seed=seed))
    return read_manifest(root / category).artifact_id


def sample(registry: Registry, name: str, **labels: str) -> float | None:
    return registry.metrics.registry.get_sample_value(name, labels)


def blank(registry: Registry, name: str) -> np.ndarray:
    size = registry.get(name).inspector.config.image_size
    return np.zeros((size, size, 3), dtype=np.uint8)


async def test_start_loads_every_category(tiny_artifacts):
    registry = Registry(Settings(artifacts=tiny_artifacts), Metrics())
    assert not registry.is_ready() and registry.all() == [] and registry.executor is None
    await registry.start()
    try:
        assert registry.loading_finished and registry.is_ready() and registry.executor is not None
        assert [c.name for c in registry.all()] == ["alpha", "beta"]
        for category in registry.all():
            assert category.state == "ready" and category.error is None and category.loaded_at is not None
            assert category.artifact_id == read_manifest(tiny_artifacts / category.name).artifact_id
            assert sample(registry, "inspect_model_loaded", category=category.name) == 1
        scored = await registry.get("alpha").batcher.score([blank(registry, "alpha")])
        assert scored[0].result.artifact_id == registry.get("alpha").artifact_id
    finally:
        await registry.close()


async def test_not_ready_without_any_category(tmp_path):
    async with started(tmp_path / "missing") as registry:
        assert registry.loading_finished and registry.all() == [] and not registry.is_ready()


async def test_a_broken_artifact_fails_only_its_category(root, tmp_path):
    tamper(root, "alpha")
    async with started(root) as registry:
        alpha, beta = registry.get("alpha"), registry.get("beta")
        assert alpha.state == "failed" and alpha.inspector is None and alpha.artifact_id is None
        assert "SHA-256" in alpha.error
        assert str(tmp_path) not in alpha.error and str(root.resolve()) not in alpha.error
        assert beta.state == "ready" and registry.is_ready()
        assert sample(registry, "inspect_model_loaded", category="alpha") == 0
        with pytest.raises(ModelUnavailable):
            await alpha.batcher.score([np.zeros((8, 8, 3), np.uint8)])


async def test_not_ready_when_every_category_failed(root):
    tamper(root, "alpha")
    (root / "beta").resolve().joinpath("memory_bank.safetensors").unlink()
    async with started(root) as registry:
        assert {c.name: c.state for c in registry.all()} == {"alpha": "failed", "beta": "failed"}
        assert "missing file memory_bank.safetensors" in registry.get("beta").error
        assert registry.loading_finished and not registry.is_ready()


async def test_reload_swaps_in_the_new_version(root, tiny_data):
    async with started(root) as registry:
        alpha = registry.get("alpha")
        old_inspector, old_id = alpha.inspector, alpha.artifact_id
        new_id = await publish(tiny_data, root, "alpha", seed=5)
        assert new_id != old_id
        assert await registry.reload("alpha") == (old_id, new_id)
        assert alpha.inspector is not old_inspector and alpha.artifact_id == new_id
        assert alpha.state == "ready" and alpha.error is None
        scored = await alpha.batcher.score([blank(registry, "alpha")])
        assert scored[0].result.artifact_id == new_id
        assert sample(registry, "inspect_reloads_total", category="alpha", result="ok") == 1


async def test_a_failed_reload_keeps_the_old_inspector(root, tiny_data, tmp_path):
    async with started(root) as registry:
        alpha = registry.get("alpha")
        old_inspector, old_id = alpha.inspector, alpha.artifact_id
        await publish(tiny_data, root, "alpha", seed=6)
        tamper(root, "alpha", "memory_bank.safetensors")
        with pytest.raises(ReloadError) as caught:
            await registry.reload("alpha")
        assert caught.value.status == 409 and caught.value.code == "reload_failed"
        assert f"still serving {old_id}" in caught.value.message and str(tmp_path) not in caught.value.message
        assert alpha.inspector is old_inspector and alpha.state == "ready" and "SHA-256" in alpha.error
        scored = await alpha.batcher.score([blank(registry, "alpha")])
        assert scored[0].result.artifact_id == old_id
        assert sample(registry, "inspect_reloads_total", category="alpha", result="failed") == 1
        assert sample(registry, "inspect_model_loaded", category="alpha") == 1


async def test_reload_of_an_unknown_category_is_404(root):
    async with started(root) as registry:
        with pytest.raises(ReloadError) as caught:
            await registry.reload("gamma")
        assert caught.value.status == 404 and caught.value.code == "unknown_category"
        assert registry.get("gamma") is None and [c.name for c in registry.all()] == ["alpha", "beta"]


async def test_reload_all_adds_new_and_changed_categories_and_skips_current_ones(root, tiny_data):
    async with started(root) as registry:
        alpha_inspector, beta_id = registry.get("alpha").inspector, registry.get("beta").artifact_id
        gamma_id = await publish(tiny_data, root, "gamma", seed=2)
        new_beta_id = await publish(tiny_data, root, "beta", seed=7)
        assert registry.metric_label("gamma") == UNKNOWN_CATEGORY
        await registry.reload_all()
        assert registry.get("alpha").inspector is alpha_inspector
        assert sample(registry, "inspect_reloads_total", category="alpha", result="ok") is None
        assert registry.get("beta").artifact_id == new_beta_id != beta_id
        gamma = registry.get("gamma")
        assert gamma.state == "ready" and gamma.artifact_id == gamma_id
        assert registry.metric_label("gamma") == "gamma"
        scored = await gamma.batcher.score([blank(registry, "gamma")])
        assert scored[0].result.artifact_id == gamma_id


async def test_reload_all_retries_a_failed_category(root):
    broken = (root / "alpha").resolve() / "backbone.safetensors"
    intact = broken.read_bytes()
    tamper(root, "alpha")
    async with started(root) as registry:
        assert registry.get("alpha").state == "failed"
        broken.write_bytes(intact)
        await registry.reload_all()
        assert registry.get("alpha").state == "ready" and registry.get("alpha").error is None


async def test_metric_label_names_served_categories_only(root):
    idle = Registry(Settings(artifacts=root), Metrics())
    assert idle.metric_label("alpha") == UNKNOWN_CATEGORY  # nothing served before start
    async with started(root) as registry:
        assert registry.metric_label("alpha") == "alpha" and registry.metric_label("beta") == "beta"
        labels = {registry.metric_label(f"probe-{i}") for i in range(100)}
        assert labels == {UNKNOWN_CATEGORY}
        assert registry.metric_label("../alpha") == registry.metric_label("") == UNKNOWN_CATEGORY


async def test_close_stops_the_batchers_and_the_inference_threads(root):
    async with started(root) as registry:
        batchers = [c.batcher for c in registry.all()]
        image = blank(registry, "alpha")
    assert registry.executor is None
    for batcher in batchers:
        with pytest.raises(ModelUnavailable):
            await batcher.score([image])
