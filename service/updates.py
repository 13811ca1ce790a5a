"""The line's update jobs: learn the pending confirmations into a new version, in the background.

One job per category at a time. A job hard-links the pending confirmations into its own folder
(what arrives while it runs waits for the next one), runs ``factory-inspect update`` as a
child process (a crash or kill there never touches the live version, which keeps serving),
reads its progress from the status file the command rewrites at each stage, and when it
succeeds forgets the confirmations it learned and reloads the category: the swap that
``POST /reload`` does, so no request is dropped. A rollback (``rollback``) is refused while a
job runs, and a job is refused while the category reloads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from model.serving import RollbackError, rollback
from service.errors import ApiError
from service.feedback import FeedbackStore, storage_error
from service.registry import Registry, ReloadError

log = logging.getLogger("service.updates")

STDERR_TAIL = 2000  # characters of a failed job's stderr kept for its status


@dataclass
class UpdateJob:
    """The latest update of one category, as ``GET /categories/<c>/update`` shows it."""

    category: str
    state: str = "running"  # running | done | failed
    stage: str = "start"  # the update command's stage (load, features, coreset, drift, validate, ...)
    started_at: float = 0.0
    finished_at: float | None = None
    confirmations: int = 0  # how many it learns
    parent: str | None = None  # the version it started from
    artifact_id: str | None = None  # the version it published
    error: str | None = None


class Updates:
    """Update jobs and rollbacks of the registry's categories."""

    def __init__(self, registry: Registry, feedback: FeedbackStore | None, device: str) -> None:
        self.registry = registry
        self.feedback = feedback
        self.device = device
        self._jobs: dict[str, UpdateJob] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    def status(self, category: str) -> UpdateJob | None:
        return self._jobs.get(category)

    def running(self, category: str) -> bool:
        job = self._jobs.get(category)
        return job is not None and job.state == "running"

    def location(self, category: str) -> str:
        """What the update command takes: ``<root>/<category>`` or ``s3://.../<category>``."""
        return f"{str(self.registry.settings.artifacts).rstrip('/')}/{category}"

    def store(self) -> FeedbackStore:
        """The confirmations store (503 ``feedback_disabled`` when none is configured)."""
        if self.feedback is None:
            raise ApiError(503, "feedback_disabled", "confirmations are off: set FACTORY_INSPECT_FEEDBACK_DIR "
                           "(artifacts in s3:// have no default folder)")
        return self.feedback

    async def start(self, category: str) -> UpdateJob:
        """Start learning ``category``'s pending confirmations (409 when one runs, the category is
        reloading, or nothing waits)."""
        store = self.store()
        if self.running(category):
            raise ApiError(409, "update_running", f"an update of {category} is running; see GET .../update")
        served = self.registry.get(category)
        if served is not None and served.lock.locked():
            raise ApiError(409, "reload_running", f"{category} is reloading; try the update again when it is done")
        work = None
        try:
            store.root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".update-{category}-", dir=store.root))
            hashes, sources = await asyncio.to_thread(store.snapshot, category, work)
        except OSError as exc:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            raise storage_error(exc, store.root) from exc
        if not hashes:
            shutil.rmtree(work, ignore_errors=True)
            raise ApiError(409, "nothing_to_learn", f"no confirmations wait for {category}: mark recent "
                           "inspections as good or defect first (POST .../feedback)")
        job = UpdateJob(category, started_at=time.time(), confirmations=len(hashes),
                        parent=served.artifact_id if served is not None else None)
        command = [sys.executable, "-m", "cli.main", "update", "--artifact", self.location(category),
                   "--device", self.device, "--status-file", str(work / "status.json")]
        if "good" in sources:
            command += ["--goods", str(sources["good"])]
        for part in ("marked", "unmarked"):
            if part in sources:
                command += ["--defects", str(sources[part])]
        try:
            proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise ApiError(503, "update_unavailable", f"the update could not start: {exc}") from exc
        self._jobs[category], self._procs[category] = job, proc
        self._tasks[category] = asyncio.create_task(self._follow(job, proc, work, hashes))
        log.info("update of %s started: %d confirmations (pid %d)", category, len(hashes), proc.pid)
        return job

    async def _follow(self, job: UpdateJob, proc: asyncio.subprocess.Process, work: Path, hashes: list[str]) -> None:
        status = work / "status.json"
        try:
            reading = asyncio.create_task(proc.stderr.read())
            while not reading.done():
                await asyncio.wait([reading], timeout=0.2)
                job.stage = _read_status(status).get("stage", job.stage)
            stderr = reading.result().decode(errors="replace")
            code = await proc.wait()
            final = _read_status(status)
            if code != 0 or final.get("stage") != "done":
                job.state, job.error = "failed", final.get("error") or _why(code, stderr)
                log.error("update of %s failed: %s", job.category, job.error)
                return
            job.artifact_id = final["artifact_id"]
            await asyncio.to_thread(self.feedback.forget, job.category, hashes)
            try:
                await self.registry.reload(job.category)
            except ReloadError as exc:
                job.state, job.error = "failed", f"published {job.artifact_id} but the reload failed: {exc.message}"
                return
            job.state, job.stage = "done", "done"
        except Exception as exc:  # a job never takes the server down
            log.exception("update of %s", job.category)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = time.time()
            self._procs.pop(job.category, None)
            shutil.rmtree(work, ignore_errors=True)

    async def rollback(self, category: str) -> tuple[str, str]:
        """Return ``category`` to its parent version and swap it in; (left, now live)."""
        if self.running(category):
            raise ApiError(409, "update_running", f"an update of {category} is running; roll back when it is done")
        try:
            left, live = await asyncio.to_thread(rollback, self.location(category))
        except RollbackError as exc:
            raise ApiError(409, "no_parent", str(exc)) from exc
        try:
            await self.registry.reload(category)
        except ReloadError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from exc
        return left, live

    async def close(self) -> None:
        """Stop running jobs (their child processes); the live versions are untouched."""
        for proc in list(self._procs.values()):
            if proc.returncode is None:
                proc.terminate()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def _read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _why(code: int, stderr: str) -> str:
    """A failed command's reason: its ``error:`` line, or how it ended."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    if lines:
        return lines[-1].removeprefix("error:").strip()[:STDERR_TAIL]
    if code < 0:
        return f"the update process was ended by signal {-code}; the live version is unchanged"
    return f"the update process exited with {code}: {stderr[-STDERR_TAIL:].strip() or 'no output'}"
