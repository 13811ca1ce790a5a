"""Pydantic models of every response body (they document the OpenAPI schema).

Result models refuse NaN and infinity (``allow_inf_nan=False``): a non-finite value
never reaches JSON; building such a model fails and the API answers 500.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.serving import Region, Thresholds


class Finite(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)


class ErrorBody(BaseModel):
    """Every error: a message, a stable machine-readable code, the request id."""

    error: str = Field(description="human-readable message")
    code: str = Field(description="stable code, e.g. invalid_image, image_too_large, artifact_unavailable")
    request_id: str


class ImageResult(Finite):
    """The verdict and maps of one image."""

    category: str
    filename: str | None = Field(None, description="the multipart part's filename, when given")
    width: int = Field(description="input width; heatmap, mask and overlay have this size")
    height: int
    score: float = Field(description="raw image score: the maximum of the anomaly map, or the mean of its top "
                         "fraction of pixels (image_top_fraction of the category, chosen by the fit)")
    normalized_score: float = Field(description="score mapped to [0, 1]; 0.5 is the threshold")
    threshold: float = Field(description="image threshold used (calibrated, or the request's override)")
    pixel_threshold: float = Field(description="calibrated map threshold behind mask and regions")
    is_anomalous: bool = Field(description="score > threshold")
    heatmap: str | None = Field(
        None, description="base64 PNG (RGB, JET): anomaly map over the fixed range [0, 2 x calibrated threshold]"
    )
    mask: str | None = Field(None, description="base64 PNG (8-bit gray, 255 = defect): map > pixel_threshold")
    overlay: str | None = Field(None, description="base64 PNG (RGB): heatmap blended on the input, mask outlined")
    map: str | None = Field(
        None, description="base64 PNG (8-bit gray): the anomaly map over [0, heatmap_max], 255 = heatmap_max or more "
        "(for clients that colour it themselves, like the page)"
    )
    heatmap_max: float = Field(
        description="top of the fixed colour range of heatmap, overlay and map (2 x calibrated image threshold); "
        "the bottom is 0"
    )
    regions: list[Region] = Field(description="defect regions of the mask in input pixels (bbox, area, peak), highest peak first")
    batch_size: int = Field(description="images in the inference call that scored this one")
    timings_ms: dict[str, float] = Field(
        description="server stages: read, decode, queue, inference stages (batch), inference, encode, total"
    )
    artifact_id: str = Field(description="the artifact that scored this image")
    request_id: str


class BatchResult(Finite):
    """Several images (the multipart ``files`` field): one result each, in upload order."""

    category: str
    artifact_id: str = Field(description="artifact of the first result (each result names its own)")
    count: int
    results: list[ImageResult]
    timings_ms: dict[str, float] = Field(description="request stages: read, decode, queue, encode, total")
    request_id: str


class CategoryStatus(BaseModel):
    name: str
    state: Literal["loading", "ready", "failed", "unloaded"] = Field(
        description="unloaded: published, not loaded in this process (categories loaded on demand, cluster mode)")
    artifact_id: str | None = Field(None, description="the live artifact")
    error: str | None = Field(None, description="why it failed to load, or why the last reload failed")
    loaded_at: datetime | None = None


class CategoryList(BaseModel):
    categories: list[CategoryStatus]


class ManifestSummary(BaseModel):
    """What the live artifact is and how it was fitted."""

    format_version: int | None = None
    created_at: str | None = None
    backbone_arch: str | None = None
    backbone_weights: str | None = None
    image_size: int | None = None
    blocks: dict[str, bool] = Field(default_factory=dict, description="method blocks (nns, gaussian, psg, fusion, head) switched on or off")
    thresholds: Thresholds | None = None
    bank_size: int | None = None
    n_patches: int | None = None
    fit_seconds: dict[str, float] = Field(default_factory=dict)
    training_images: int | None = None
    training_fingerprint: str | None = None
    labelled_defects: int = Field(0, description="labelled defect images the fit calibrated with (fit --defects)")
    validation: dict[str, float | None] | None = Field(
        None, description="image AUROC, pixel AUROC and AU-PRO on the held-out goods plus those defects"
    )
    thresholds_with_defects: dict[str, Any] | None = Field(
        None, description="with labelled defects: the goods' false-alarm-rate thresholds, those that maximise F1 on the "
        "goods plus the defects, and which the artifact uses (policy: far unless the fit asked for f1)")
    versions: dict[str, str] = Field(default_factory=dict)
    holdout_scores: dict[str, float] = Field(
        default_factory=dict, description="raw image scores of the fit's held-out good parts: count, mean, std, min, "
        "p50, p95, max")
    scoring: dict[str, Any] | None = Field(
        None, description="how the fit chose the scoring: mode (auto, forced, config, fallback), the chosen "
        "candidate, every candidate's validation figures, the rule, and any warning")
    image_top_fraction: float = Field(0.0, description="the image score: 0 = the maximum of the map; f = the mean "
                                      "of its top f of pixels (chosen with the scoring)")
    psg_selection: dict[str, Any] | None = Field(
        None, description="with labelled defects: the chosen scoring without and with PSG, validated by the same "
        "rule, and the choice")
    defect_head: dict[str, Any] | None = Field(
        None, description="with labelled defects: the defect head's boost weight (0: off), every weight's figures "
        "on held-out labelled defects, the rule, its training record, and the shots it learned from (count per "
        "type, file names, SHA-256); or why it was skipped")
    skipped_images: list[str] = Field(default_factory=list, description="training images that did not decode "
                                      "and were left out (fit --skip-bad-images)")


class DriftReport(Finite):
    """Recent image scores against the held-out goods of the fit (``service.drift``)."""

    window: int = Field(description="most recent image scores kept (drift_window)")
    count: int = Field(description="scores in the window since the live artifact was loaded")
    recent_median: float | None = Field(None, description="median raw score of the window (null below 8 scores)")
    holdout_median: float | None = Field(None, description="median raw score of the fit's held-out good parts")
    ratio: float | None = Field(
        None, description="recent_median / holdout_median: 1.0 = as at fit time, 1.3 = good parts score 30% higher"
    )
    recent_anomaly_rate: float | None = Field(
        None, description="share of the window above the calibrated image threshold (null below 8 scores)"
    )
    expected_false_alarm_rate: float | None = Field(
        None, description="the fit's target share of good parts above the threshold (image_false_alarm_rate)"
    )
    threshold: float | None = Field(None, description="the calibrated image threshold the rate counts against")
    status: Literal["insufficient_data", "ok", "watch", "drift"] = Field(
        description="insufficient_data below 8 scores; drift: ratio > 1.5 or (>= 3 flagged and rate > 5x expected); "
        "watch: ratio > 1.2 or (>= 3 flagged and rate > 2x expected); else ok"
    )
    hint: str = Field(description="what to check: lighting, focus, fixture, or re-fit with recent good images")


class CategoryDetail(CategoryStatus):
    manifest: ManifestSummary | None = Field(None, description="summary of the live artifact's manifest")
    drift: DriftReport | None = Field(None, description="recent scores against the fit (null while not serving)")


class RecentItem(Finite):
    """One recent inspection (``service.recent``)."""

    time: datetime = Field(description="when the result was recorded (UTC)")
    filename: str | None = None
    score: float
    threshold: float = Field(description="image threshold of the verdict (calibrated, or the request's override)")
    is_anomalous: bool
    regions: int = Field(description="defect regions found")
    artifact_id: str
    request_id: str
    thumbnail: str = Field(description="base64 JPEG of the input, at most 96 px on its longer side")
    width: int | None = Field(None, description="the inspected image's width (a confirmation's box is in its pixels)")
    height: int | None = Field(None, description="the inspected image's height (null: not recorded)")


class RecentList(BaseModel):
    """The last inspections of a category, newest first."""

    category: str
    limit: int = Field(description="most inspections kept in memory (recent_per_category; 0: off)")
    items: list[RecentItem]


class ReloadResult(BaseModel):
    category: str
    artifact_id: str
    previous_artifact_id: str | None
    seconds: float
    request_id: str


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    loading_finished: bool
    categories: dict[str, CategoryStatus]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
