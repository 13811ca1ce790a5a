"""Server settings, from keyword arguments or ``FACTORY_INSPECT_*`` environment variables.

Every field can be set in the environment with the prefix, e.g.
``FACTORY_INSPECT_ARTIFACTS=/srv/artifacts`` or ``FACTORY_INSPECT_API_KEY=...``.
Keyword arguments (what the CLI passes) win over the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.drift import MIN_SCORES


class Settings(BaseSettings):
    """Configuration of one server process."""

    model_config = SettingsConfigDict(env_prefix="FACTORY_INSPECT_", extra="ignore", frozen=True)

    # Models
    artifacts: Path | str = Field(
        Path("artifacts"),
        description="artifacts root (every <root>/<category> is served), or s3://bucket/prefix (published versions, "
        "fetched, hash-verified and cached in artifact_cache)",
    )
    artifact_cache: Path | None = Field(
        None, description="local cache of artifacts fetched from s3:// (default: <tmp>/factory-inspect-cache-<uid>)"
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="torch device for inference")
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    runtime: Literal["torch", "onnxruntime"] = Field(
        "torch", description="feature-path runtime: torch, or onnxruntime (exported to ONNX at load)"
    )
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="feature-path precision on CUDA with the torch runtime (fp16 keeps accuracy, bf16 does not)"
    )

    # Input limits
    max_body_bytes: int = Field(20_000_000, ge=1, description="largest request body, counted while it streams")
    max_pixels: int = Field(64_000_000, ge=1, description="largest decoded image (width x height), from the header")
    max_request_pixels: int = Field(
        128_000_000, ge=1, description="most decoded pixels over all images of one request (from the headers)"
    )
    max_images_per_request: int = Field(32, ge=1, description="most images (multipart parts) in one request")

    # Dynamic batching and back-pressure
    max_batch_size: int = Field(8, ge=1, description="most images in one inference call")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more images once one arrives")
    max_queue: int = Field(64, ge=1, description="images admitted per category (queued or running); then 503")
    request_timeout_s: float = Field(30.0, gt=0, description="deadline of one inspect request; then 504")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with an overload 503")
    inference_workers: int = Field(1, ge=1, description="threads running inference (all categories share them)")

    # Responses
    max_regions: int = Field(32, ge=0, description="most defect regions listed per image")
    png_compression: int = Field(1, ge=0, le=9, description="zlib level of returned PNGs (speed over size)")

    # Monitoring
    drift_window: int = Field(
        256, ge=MIN_SCORES, description="recent image scores per category compared with the fit's held-out goods"
    )

    # The page's recent panel (service.recent)
    recent_per_category: int = Field(
        20, ge=0, le=1000, description="recent inspections kept in memory per category, with a small thumbnail (0: off)"
    )
    recent_dir: Path | None = Field(
        None, description="also keep the recent inspections on disk under <recent_dir>/<category>/ (default: off)"
    )
    recent_dir_per_category: int = Field(
        1000, ge=1, description="most inspections kept on disk per category (oldest removed first)"
    )

    # The line teaches the model (service.feedback, service.updates)
    feedback_dir: Path | None = Field(
        None, description="confirmations from the line wait here for an update (default: <artifacts>/.feedback "
        "for a local artifacts folder; with s3:// artifacts set it, or confirmations are off)"
    )
    feedback_per_category: int = Field(
        1000, ge=1, description="most confirmations waiting per category; then 409 until an update learns them"
    )

    # Security
    api_key: SecretStr | None = Field(
        None, description="when set, /inspect and reload need 'Authorization: Bearer <api_key>'"
    )
    reload_key: SecretStr | None = Field(
        None, description="bearer key for the reload endpoint (default: api_key; neither set: loopback only)"
    )
    reload_on_sighup: bool = Field(True, description="SIGHUP reloads every category (main thread only)")
    reload_poll_s: float = Field(
        0.0, ge=0, description="every this many seconds, reload the categories whose published version changed "
        "(an update or rollback made elsewhere: cluster mode sets 10; 0: off)"
    )

    @property
    def feedback_root(self) -> Path | None:
        """Where confirmations are kept (None: off)."""
        if self.feedback_dir is not None:
            return self.feedback_dir
        return None if isinstance(self.artifacts, str) else Path(self.artifacts) / ".feedback"

    @field_validator("recent_dir", "feedback_dir", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        """``FACTORY_INSPECT_RECENT_DIR=`` (empty) means off, not the working directory."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("artifacts", mode="before")
    @classmethod
    def _folder_or_bucket(cls, value: object) -> object:
        """An ``s3://`` URL stays a string (a Path would fold its ``//``); anything else is a folder."""
        if isinstance(value, str) and not value.startswith("s3://"):
            return Path(value)
        return value

    @model_validator(mode="after")
    def _reduced_precision_needs_cuda(self) -> Settings:
        if self.precision != "fp32" and (self.device != "cuda" or self.runtime != "torch"):
            raise ValueError(f"precision {self.precision} needs device=cuda and runtime=torch")
        return self
