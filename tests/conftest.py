"""Shared fixtures: tiny generated datasets and artifacts fitted on them with a random-init backbone."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import pytest
import torch

from model.method.config import FitConfig
from model.jobs.fit import fit
from model.jobs.demo_data import generate_category

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
        "head.steps": 20,
        "head.fold_steps": 10,
        "head.pasted": 8,
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


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_category(*parts: str) -> Path:
    """A category folder under ../shared/data, or skip with a clear message when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (expected ../shared/data beside the repo)")
    return path


def bottle_config(**overrides) -> FitConfig:
    """Real bottles at 256 px with the embedded EfficientNet-Lite2 weights, a small Gaussian and a 1 %
    coreset: the smallest fit that still finds real defects (about a minute for 30-40 images on 2 cores)."""
    return tiny_config(**{"image_size": 256, "backbone.arch": "tf_efficientnet_lite2", "backbone.weights": "embedded",
                          "gaussian.dims": 72, "nns.coreset_ratio": 0.01, **overrides})


def bottle_subset(dst: Path, n_train: int, test: dict[str, int] | None = None) -> Path:
    """An MVTec-layout category at ``dst`` of symlinks to the first ``n_train`` real good bottles of
    ../shared/data, and per test folder (``good`` or a defect type) its first images and masks."""
    src = shared_category("mvtec_ad", "bottle")
    (dst / "train" / "good").mkdir(parents=True)
    for f in sorted((src / "train" / "good").iterdir())[:n_train]:
        os.symlink(f, dst / "train" / "good" / f.name)
    for defect, count in (test or {}).items():
        (dst / "test" / defect).mkdir(parents=True)
        if defect != "good":
            (dst / "ground_truth" / defect).mkdir(parents=True)
        for f in sorted((src / "test" / defect).iterdir())[:count]:
            os.symlink(f, dst / "test" / defect / f.name)
            if defect != "good":
                mask = f"{f.stem}_mask.png"
                os.symlink(src / "ground_truth" / defect / mask, dst / "ground_truth" / defect / mask)
    return dst


@pytest.fixture(scope="session")
def bottle_artifacts(tmp_path_factory) -> Path:
    """An artifacts root with ``bottle`` fitted on 30 real good bottles (skips without ../shared/data)."""
    data = bottle_subset(tmp_path_factory.mktemp("bottle-data") / "bottle", 30)
    root = tmp_path_factory.mktemp("bottle-artifacts")
    fit(data, "bottle", root, bottle_config())
    return root


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


def kill_when_paused(proc: subprocess.Popen, marker: Path, what: str) -> None:
    """Wait until ``proc`` reaches its test pause (``marker`` appears), then SIGKILL it there;
    fails if it exits first. The process is reaped either way."""
    try:
        wait_until(lambda: marker.exists() or proc.poll() is not None, f"the {what}", timeout=300)
        assert proc.poll() is None, f"exited with {proc.returncode} before the {what}"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
