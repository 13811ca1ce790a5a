"""ArtifactLoader: one category's artifact becomes a warmed Inspector, and load errors read without server paths."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from model.serving import ArtifactError, read_manifest
from service.loading import ArtifactLoader
from service.settings import Settings


def loader(root: Path) -> ArtifactLoader:
    return ArtifactLoader(Settings(artifacts=root))


def test_load_blocking_builds_the_published_artifact(tiny_artifacts):
    inspector = loader(tiny_artifacts).load_blocking("alpha")
    assert inspector.artifact_id == read_manifest(tiny_artifacts / "alpha").artifact_id


@pytest.mark.parametrize("name, error", [("../alpha", ValueError), ("gamma", ArtifactError)])
def test_load_blocking_refuses_bad_and_missing_names(tiny_artifacts, name, error):
    with pytest.raises(error):
        loader(tiny_artifacts).load_blocking(name)


def test_a_category_serving_another_categorys_artifact_is_logged(tiny_artifacts, tmp_path, caplog):
    shutil.copytree((tiny_artifacts / "alpha").resolve(), tmp_path / "renamed")
    with caplog.at_level(logging.WARNING, logger="service.loading"):
        inspector = loader(tmp_path).load_blocking("renamed")
    assert inspector.manifest.category == "alpha"
    assert "fitted as 'alpha'" in caplog.text


def test_public_error_strips_the_root(tmp_path):
    root = tmp_path / "artifacts"
    exc = ArtifactError(f"{root.resolve()}/.versions/alpha-1: backbone.safetensors does not match its SHA-256")
    message = loader(root).public_error(exc)
    assert message == ".versions/alpha-1: backbone.safetensors does not match its SHA-256"


def test_public_error_strips_a_relative_root_and_its_resolved_form(tmp_path, monkeypatch):
    """The relative root is a suffix of the resolved one: the longer must go first, whatever the set order."""
    monkeypatch.chdir(tmp_path)
    exc = ArtifactError(f"{Path('artifacts').resolve()}/.versions/alpha-1: missing file memory_bank.safetensors")
    message = loader(Path("artifacts")).public_error(exc)
    assert message == ".versions/alpha-1: missing file memory_bank.safetensors"
    assert str(tmp_path) not in message and os.sep + ".versions" not in message


def test_public_error_hides_unexpected_errors():
    message = loader(Path("/srv/artifacts")).public_error(RuntimeError("/srv/artifacts/alpha: boom"))
    assert message == "artifact could not be loaded (RuntimeError)"


class WarmUpRecorder:
    """An inspector stand-in that records which thread ran which batch size."""

    def __init__(self, score: float = 0.5) -> None:
        self.config = SimpleNamespace(image_size=4)
        self.score = score
        self.calls: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def inspect(self, images):
        with self._lock:
            self.calls.append((threading.current_thread().name, len(images)))
        return [SimpleNamespace(score=self.score) for _ in images]


def load_on_cuda_settings(inspector: WarmUpRecorder, workers: int) -> None:
    """``ArtifactLoader.load`` with device=cuda, the blocking load replaced by ``inspector`` (runs on CPU)."""
    settings = Settings(artifacts=Path("/nonexistent"), device="cuda", inference_workers=workers, max_batch_size=3)
    cuda_loader = ArtifactLoader(settings)
    cuda_loader.load_blocking = lambda name: inspector

    async def main():
        with ThreadPoolExecutor(workers, thread_name_prefix="inference") as executor:
            return await cuda_loader.load("alpha", executor)

    assert asyncio.run(main()) is inspector


def test_cuda_warm_up_runs_every_batch_size_on_every_inference_thread():
    inspector = WarmUpRecorder()
    load_on_cuda_settings(inspector, workers=3)
    threads = {name for name, _ in inspector.calls}
    assert len(threads) == 3 and all(name.startswith("inference") for name in threads)
    for thread in threads:
        assert [size for name, size in inspector.calls if name == thread] == [1, 2, 3]


def test_warm_up_refuses_non_finite_scores():
    with pytest.raises(ArtifactError, match="non-finite"):
        load_on_cuda_settings(WarmUpRecorder(score=math.nan), workers=2)
