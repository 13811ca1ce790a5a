"""Shared fixtures: tiny generated datasets and artifacts fitted on them with a random-init backbone."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from model.method.config import FitConfig
from model.jobs.fit import fit
from cli.synthetic import generate_category

torch.set_num_threads(min(2, os.cpu_count() or 1))

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(**overrides) -> FitConfig:
    """64 px, random-init EfficientNet-Lite0: fits in about a second."""
    base = {
        "image_size": 64,
        "batch_size": 8,
        "backbone.arch": "tf_efficientnet_lite0",
        "backbone.weights": "random",
        "gaussian.dims": 16,
        "nns.coreset_ratio": 0.1,
        "calibration.min_holdout": 3,
    }
    base.update(overrides)
    return FitConfig().with_overrides(base)


def config_args(config: FitConfig) -> list[str]:
    """``--set key=value`` CLI arguments that reproduce ``config``."""
    args = []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            args += [a for k, v in value.items() for a in ("--set", f"{key}.{k}={json.dumps(v)}")]
        else:
            args += ["--set", f"{key}={json.dumps(value)}"]
    return args


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small MVTec-layout category generated on the fly."""
    root = tmp_path_factory.mktemp("data") / "tiles"
    return generate_category(root, kind="tiles", n_train=12, n_test_good=4, n_test_defect=8, size=128, seed=0)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory, tiny_data) -> Path:
    """An artifacts root with two fitted categories, ``alpha`` and ``beta``."""
    root = tmp_path_factory.mktemp("artifacts")
    fit(tiny_data, "alpha", root, tiny_config())
    fit(tiny_data, "beta", root, tiny_config(seed=1))
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's own work: on a small shared machine two
    spinning threads are slower than one next to a server's threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_category(*parts: str) -> Path:
    """A category folder under ../shared/data, or skip with a clear message when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (expected ../shared/data beside the repo)")
    return path


def wait_until(condition: Callable[[], T], what: str | Callable[[], str], timeout: float = 60.0,
               interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Fails the test loudly (saying ``what`` was awaited) when it never holds within
    ``timeout`` seconds. The timeout is a generous bound for a wedged test, never a
    measurement: nothing asserts how long the wait took.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)
