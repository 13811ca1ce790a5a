"""The one inspect pipeline, for every API (``POST /inspect``, OIP v2 ``infer``, the page).

admission → decoding → scoring (the category's batcher) → verdict and rendering (one worker
thread) → metrics → drift → recent list. A router parses its request into an ``Intake`` (how
many images, and how to decode them) and a ``Decision``, passes the function that renders one
image's answer, and builds its response from the ``Inspection``; everything else happens here,
once, in this order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Generic, TypeVar

import numpy as np
from starlette.requests import Request

from model.serving import MAX_REGIONS, InspectionResult, NonFiniteResult, Verdict
from service.batching import ModelUnavailable, QueueFull, Scored
from service.category import Category
from service.errors import ApiError, request_id_of
from service.metrics import Metrics
from service.recent_entry import RecentEntry
from service.scoring import artifact_unavailable, overloaded, score_images
from service.settings import Settings

log = logging.getLogger("service.pipeline")

R = TypeVar("R")


@dataclass(frozen=True)
class Decision:
    """How one request decides: image and pixel threshold overrides (None: calibrated), and at most
    how many defect regions to find (0: none)."""

    threshold: float | None = None
    pixel_threshold: float | None = None
    max_regions: int = MAX_REGIONS

    def verdict(self, result: InspectionResult, size: tuple[int, int]) -> Verdict:
        return result.verdict(size, self.threshold, self.max_regions, self.pixel_threshold)


@dataclass
class Intake:
    """A parsed request's images: how many (admitted before any decoding), a blocking ``decode``
    giving RGB ``uint8 [H, W, 3]`` images and the ms each took, their file names (when they have
    some), and how long reading the body took (ms)."""

    count: int
    decode: Callable[[], tuple[list[np.ndarray], list[float]]]
    filenames: Sequence[str | None] = ()
    read_ms: float = 0.0


@dataclass
class Inspected(Generic[R]):
    """One image through the pipeline: its verdict at the input size, what the router rendered of
    it, and its stage times (read, decode, queue, the batch's stages, inference, encode, total)."""

    filename: str | None
    result: InspectionResult
    verdict: Verdict
    rendered: R
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Inspection(Generic[R]):
    """Every image of one request, in order, and the request's stage times (read, decode, queue,
    encode, total)."""

    images: list[Inspected[R]]
    timings_ms: dict[str, float]
    request_id: str


class Pipeline:
    """The sequence every API runs, with the app's settings and metrics."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics

    async def run(self, request: Request, category: Category, intake: Intake, decision: Decision,
                  render: Callable[[np.ndarray, Verdict], R], record: bool = True) -> Inspection[R] | None:
        """Inspect the intake's images; None when the client left before its results.

        ``render(image, verdict)`` (blocking) makes one image's answer in the worker thread.
        Without ``record`` (a what-if re-ask) the verdict counters, drift window and recent list
        are left alone.
        """
        rid = request_id_of(request)
        try:
            with category.batcher.admission(intake.count):
                images, decode_ms = await asyncio.to_thread(intake.decode)
                remaining = self.settings.request_timeout_s - (time.perf_counter() - request.state.t0)
                scored = await score_images(request, category, images, remaining)
        except QueueFull as exc:
            raise overloaded(category, self.settings.retry_after_s) from exc
        except ModelUnavailable as exc:
            raise artifact_unavailable(category) from exc
        if scored is None:
            return None
        decided = await asyncio.to_thread(_decide_all, images, scored, decision, render, rid)
        inspection = _timed(intake, decode_ms, scored, decided, request.state.t0, rid)
        self._observe(category.name, inspection, record)
        if record:
            _record_drift(category, inspection.images)
            await _record_recent(category, images, inspection)
        return inspection

    def _observe(self, category: str, inspection: Inspection, verdicts: bool) -> None:
        """Images scored, verdict counters (unless a what-if re-ask) and one observation per stage (the
        batch stages of the first image, the request's decode and encode)."""
        self.metrics.observe_images(category, len(inspection.images))
        if verdicts:
            self.metrics.observe_verdicts(category, [i.verdict.is_anomalous for i in inspection.images])
        per_stage = {k: v for k, v in inspection.images[0].timings_ms.items() if k not in ("decode", "encode")}
        per_stage.update(decode=inspection.timings_ms["decode"], encode=inspection.timings_ms["encode"])
        self.metrics.observe_stages(per_stage)


def _decide_all(images: list[np.ndarray], scored: list[Scored], decision: Decision,
                render: Callable[[np.ndarray, Verdict], R], rid: str) -> list[tuple[Verdict, R, float]]:
    """Blocking: each image's verdict at its own size and its rendering, with the ms both took. A
    non-finite map is an internal error, logged, never answered."""
    out = []
    try:
        for image, s in zip(images, scored, strict=True):
            started = time.perf_counter()
            verdict = decision.verdict(s.result, image.shape[:2])
            out.append((verdict, render(image, verdict), (time.perf_counter() - started) * 1000.0))
    except NonFiniteResult as exc:
        log.error("request %s: %s", rid, exc)
        raise ApiError(500, "internal_error", "internal server error") from None
    return out


def _timed(intake: Intake, decode_ms: list[float], scored: list[Scored], decided: list[tuple[Verdict, R, float]],
           t0: float, rid: str) -> Inspection[R]:
    total = (time.perf_counter() - t0) * 1000.0
    images = []
    for i, (s, (verdict, rendered, encode_ms)) in enumerate(zip(scored, decided, strict=True)):
        timings = {"read": intake.read_ms, "decode": decode_ms[i], "queue": s.queue_ms, **s.result.timings_ms,
                   "inference": s.inference_ms, "encode": encode_ms, "total": total}
        images.append(Inspected(intake.filenames[i] if intake.filenames else None, s.result, verdict, rendered, _rounded(timings)))
    request = {"read": intake.read_ms, "decode": sum(decode_ms), "queue": max(s.queue_ms for s in scored),
               "encode": sum(e for _, _, e in decided), "total": total}
    return Inspection(images, _rounded(request), rid)


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in timings.items()}


def _record_drift(category: Category, inspected: list[Inspected]) -> None:
    """Each image's raw score into the drift window of the artifact that scored it (O(1) per score;
    statistics are computed on GET or scrape). Results of a previous artifact (a reload in flight)
    are dropped by the tracker."""
    for artifact_id in dict.fromkeys(i.result.artifact_id for i in inspected):
        category.drift.record([i.verdict.score for i in inspected if i.result.artifact_id == artifact_id],
                              artifact_id)


async def _record_recent(category: Category, images: list[np.ndarray], inspection: Inspection) -> None:
    """Each image's verdict and thumbnail into the category's recent list (and its disk store, if
    any), in a worker thread. A failure here is logged and never fails the inspection."""
    if not category.recent.enabled:
        return
    now = datetime.now(timezone.utc)
    inspector = category.inspector
    size = inspector.manifest.config.image_size if inspector is not None and inspector.manifest else None

    def entries() -> list[RecentEntry]:
        return [RecentEntry.of(now, image, i.verdict, i.filename, i.result.artifact_id, inspection.request_id, size)
                for image, i in zip(images, inspection.images, strict=True)]

    try:
        await asyncio.to_thread(lambda: category.recent.record(entries()))
    except Exception:
        log.exception("request %s: recent inspections of %s not recorded", inspection.request_id, category.name)
