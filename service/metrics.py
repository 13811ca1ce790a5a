"""Prometheus metrics, in a registry of their own per app (tests never collide).

Names (all unprefixed, as scraped):

* ``inspect_requests_total{category,status}``: inspect requests by HTTP status
* ``inspect_errors_total{category,code}``: inspect error responses by error code
* ``inspect_images_total{category}``: images scored
* ``inspect_verdicts_total{category,verdict}``: ``good`` / ``defect`` per image (what-if re-asks,
  ``record=false``, are not counted)
* ``inspect_request_duration_seconds{category}``: inspect request wall time (histogram)
* ``inspect_stage_duration_seconds{stage}``: per-stage server time (histogram)
* ``inspect_batch_size``: images per inference call (histogram)
* ``inspect_in_flight``: inspect requests being served now (gauge)
* ``inspect_queue_depth{category}``: images admitted and not yet finished (gauge)
* ``inspect_model_loaded{category}``: 1 when the category is serving, else 0
* ``inspect_reloads_total{category,result}``: reloads by ``ok`` / ``failed``
* ``inspect_gpu_memory_bytes``: ``torch.cuda.memory_allocated()`` (0 on CPU)
* ``inspect_score_drift_ratio{category}``: median of the recent image scores / median of the
  fit's held-out goods (``service.drift``), computed at scrape time
* ``inspect_recent_anomaly_rate{category}``: share of the recent image scores above the
  calibrated image threshold, computed at scrape time

The two drift gauges have no sample for a category whose window holds fewer than
``service.drift.MIN_SCORES`` scores (after start-up or a reload): absent, never 0 or NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from model.serving import gpu_memory_bytes
from service.drift import DriftSnapshot

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
UNKNOWN_CATEGORY = "_unknown"


class Metrics:
    """Every metric of one app, registered in ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("inspect_requests", "Inspect requests by HTTP status.", ["category", "status"],
                                registry=r)
        self.errors = Counter("inspect_errors", "Inspect error responses by error code.", ["category", "code"],
                              registry=r)
        self.images = Counter("inspect_images", "Images scored.", ["category"], registry=r)
        self.verdicts = Counter("inspect_verdicts", "Image verdicts.", ["category", "verdict"], registry=r)
        self.request_duration = Histogram("inspect_request_duration_seconds", "Inspect request wall time.",
                                          ["category"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_duration = Histogram("inspect_stage_duration_seconds", "Server time per stage.", ["stage"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("inspect_batch_size", "Images per inference call.", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.in_flight = Gauge("inspect_in_flight", "Inspect requests being served.", registry=r)
        self.queue_depth = Gauge("inspect_queue_depth", "Images admitted, queued or running.", ["category"],
                                 registry=r)
        self.model_loaded = Gauge("inspect_model_loaded", "1 when the category serves.", ["category"], registry=r)
        self.reloads = Counter("inspect_reloads", "Category reloads.", ["category", "result"], registry=r)
        self.gpu_memory = Gauge("inspect_gpu_memory_bytes", "torch.cuda.memory_allocated().", registry=r)

    def observe_request(self, category: str, status: int, seconds: float, error_code: str | None = None) -> None:
        self.requests.labels(category=category, status=str(status)).inc()
        if error_code:
            self.errors.labels(category=category, code=error_code).inc()
        self.request_duration.labels(category=category).observe(seconds)

    def observe_stages(self, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage_duration.labels(stage=stage).observe(ms / 1000.0)

    def observe_images(self, category: str, count: int) -> None:
        self.images.labels(category=category).inc(count)

    def observe_verdicts(self, category: str, anomalous: list[bool]) -> None:
        defects = sum(anomalous)
        if defects:
            self.verdicts.labels(category=category, verdict="defect").inc(defects)
        if len(anomalous) - defects:
            self.verdicts.labels(category=category, verdict="good").inc(len(anomalous) - defects)

    def track_gpu_memory(self, device: str) -> None:
        """Read CUDA allocated memory at every scrape when serving on CUDA."""
        if device == "cuda" and gpu_memory_bytes() is not None:
            self.gpu_memory.set_function(lambda: gpu_memory_bytes() or 0.0)

    def track_drift(self, snapshots: Callable[[], list[tuple[str, DriftSnapshot]]]) -> None:
        """Export the drift gauges of ``snapshots()`` (category, statistics), called at every scrape."""
        self.registry.register(DriftCollector(snapshots))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class DriftCollector:
    """``inspect_score_drift_ratio`` and ``inspect_recent_anomaly_rate`` per category, read at scrape
    time (requests only append their scores); a category with too few scores has no sample."""

    def __init__(self, snapshots: Callable[[], list[tuple[str, DriftSnapshot]]]) -> None:
        self._snapshots = snapshots

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        ratio = GaugeMetricFamily("inspect_score_drift_ratio",
                                  "Median of the recent image scores / median of the fit's held-out goods.",
                                  labels=["category"])
        rate = GaugeMetricFamily("inspect_recent_anomaly_rate",
                                 "Share of the recent image scores above the calibrated image threshold.",
                                 labels=["category"])
        return ratio, rate

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ratio, rate = self._families()
        for category, snapshot in self._snapshots():
            if snapshot.ratio is not None:
                ratio.add_metric([category], snapshot.ratio)
            if snapshot.recent_anomaly_rate is not None:
                rate.add_metric([category], snapshot.recent_anomaly_rate)
        yield ratio
        yield rate
