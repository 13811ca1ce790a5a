"""Prometheus metrics, in a registry of their own per app (tests never collide).

Names (all unprefixed, as scraped):

* ``inspect_requests_total{category,status}``: inspect requests by HTTP status
* ``inspect_errors_total{category,code}``: inspect error responses by error code
* ``inspect_images_total{category}``: images scored
* ``inspect_verdicts_total{category,verdict}``: ``good`` / ``defect`` per image
* ``inspect_request_duration_seconds{category}``: inspect request wall time (histogram)
* ``inspect_stage_duration_seconds{stage}``: per-stage server time (histogram)
* ``inspect_batch_size``: images per inference call (histogram)
* ``inspect_in_flight``: inspect requests being served now (gauge)
* ``inspect_queue_depth{category}``: images admitted and not yet finished (gauge)
* ``inspect_model_loaded{category}``: 1 when the category is serving, else 0
* ``inspect_reloads_total{category,result}``: reloads by ``ok`` / ``failed``
* ``inspect_gpu_memory_bytes``: ``torch.cuda.memory_allocated()`` (0 on CPU)
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from model.serving import gpu_memory_bytes

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

    def observe_verdicts(self, category: str, anomalous: list[bool]) -> None:
        self.images.labels(category=category).inc(len(anomalous))
        defects = sum(anomalous)
        if defects:
            self.verdicts.labels(category=category, verdict="defect").inc(defects)
        if len(anomalous) - defects:
            self.verdicts.labels(category=category, verdict="good").inc(len(anomalous) - defects)

    def track_gpu_memory(self, device: str) -> None:
        """Read CUDA allocated memory at every scrape when serving on CUDA."""
        if device == "cuda" and gpu_memory_bytes() is not None:
            self.gpu_memory.set_function(lambda: gpu_memory_bytes() or 0.0)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
