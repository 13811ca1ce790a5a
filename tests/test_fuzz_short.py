"""Short, bounded runs of the two fuzzers (the long runs are scripts; figures in docs/lab/issue-07-reliability.md)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_decoder_survives_a_short_coverage_guided_fuzz(tmp_path):
    pytest.importorskip("atheris")
    # Linux keeps a process's peak RSS across fork and exec, and libFuzzer's limit reads that peak:
    # the child starts at this (large) test process's peak, so the 4 GiB budget is added on top.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    proc = subprocess.run(
        [sys.executable, "benchmarks/fuzz_decode.py", "-max_total_time=15", f"-artifact_prefix={tmp_path}/",
         f"-rss_limit_mb={inherited_mb + 4096}",
         str(tmp_path / "corpus")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*"))


def test_api_survives_a_short_schema_fuzz(tiny_artifacts, tmp_path):
    pytest.importorskip("schemathesis")
    env = {**os.environ, "RELIDX": "", "PY": sys.executable, "OUT": str(tmp_path / "fuzz_api")}
    proc = subprocess.run(
        ["bash", "benchmarks/fuzz_api.sh", str(tiny_artifacts), "10", "20"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "schemathesis exit 0" in proc.stdout
