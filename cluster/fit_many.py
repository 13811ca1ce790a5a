"""``factory-inspect fit-many``: fit several categories in parallel, one Ray task each.

Each task runs the ordinary fit for one category (``model.jobs.publishing.fit_into``) and
publishes into the artifact store: ``s3://bucket/prefix`` (each a new version, pointer last)
or a local root (which must then be shared by every node, e.g. an NFS mount). A category that
fails (bad data, an exception, a crashed worker) is reported with its error; the others go
on. Tasks are not retried (a fit that failed once fails the same way again).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    category: str
    ok: bool
    artifact_id: str | None = None
    location: str | None = None
    seconds: float = 0.0
    error: str | None = None


def fit_one(data: str, category: str, artifacts: str, config: dict | None) -> FitResult:
    """One category's fit and publish, as a Ray task; never raises (errors are reported)."""
    from model.jobs.publishing import fit_into
    from model.method.config import FitConfig

    started = time.perf_counter()
    try:
        fit_config = FitConfig.from_dict(config) if config else None
        report, location = fit_into(data, category, artifacts, config=fit_config)
    except Exception as exc:  # reported per category: the other fits go on
        log.error("fit of %s failed:\n%s", category, traceback.format_exc())
        return FitResult(category, False, seconds=time.perf_counter() - started,
                         error=f"{type(exc).__name__}: {exc}"[:500])
    return FitResult(category, True, report.artifact_id, location, time.perf_counter() - started)


def discover(data_root: Path) -> list[str]:
    """Sub-folders of ``data_root`` that hold ``train/good``."""
    return sorted(p.name for p in data_root.iterdir() if (p / "train" / "good").is_dir())


def fit_many(data_root: Path | str, artifacts: Path | str, categories: list[str] | None = None, config=None,
             address: str | None = None, num_cpus: float = 1.0) -> list[FitResult]:
    """Fit ``categories`` (default: every category folder under ``data_root``) as Ray tasks.

    ``address``: a running cluster (``host:port``); without it a local Ray is started on
    loopback for the job and stopped after it.
    """
    import ray

    data_root = Path(data_root).resolve()
    names = categories or discover(data_root)
    if not names:
        raise ValueError(f"no category folders with train/good under {data_root}")
    started_here = not ray.is_initialized()
    if started_here:
        local = {} if address else {"_node_ip_address": "127.0.0.1", "include_dashboard": False}
        ray.init(address=address, logging_level="WARNING", **local)
    try:
        task = ray.remote(num_cpus=num_cpus, max_retries=0)(fit_one)
        config_dict = config.to_dict() if config is not None else None
        artifacts = str(artifacts if str(artifacts).startswith("s3://") else Path(artifacts).resolve())
        refs = {name: task.remote(str(data_root / name), name, artifacts, config_dict) for name in names}
        return [_collect(name, ref) for name, ref in refs.items()]
    finally:
        if started_here:
            ray.shutdown()


def _collect(name: str, ref) -> FitResult:
    import ray

    try:
        return ray.get(ref)
    except Exception as exc:  # the worker died (killed, out of memory): the task never returned
        return FitResult(name, False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")


def print_report(results: list[FitResult]) -> None:
    for r in results:
        if r.ok:
            print(f"ok      {r.category:<24} {r.artifact_id}  {r.seconds:6.1f} s  -> {r.location}")
        else:
            print(f"FAILED  {r.category:<24} {r.error}")
    failed = [r.category for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} categories fitted" + (f"; failed: {', '.join(failed)}"
                                                                                   if failed else ""))
