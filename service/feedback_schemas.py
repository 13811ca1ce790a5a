"""Response models of the line's confirmations, updates, rollbacks and version lineage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class FeedbackItem(BaseModel):
    sha256: str
    label: Literal["good", "defect"]
    defect_type: str | None
    has_mask: bool
    request_id: str | None
    filename: str | None
    at: float  # UNIX time


class FeedbackResult(BaseModel):
    category: str
    added: list[FeedbackItem]
    pending: int  # confirmations waiting for an update, these included
    request_id: str


class PendingFeedback(BaseModel):
    category: str
    pending: int
    limit: int
    items: list[FeedbackItem]  # the newest first (at most 100)


class UpdateStatus(BaseModel):
    category: str
    state: Literal["running", "done", "failed"]
    stage: str
    started_at: float
    finished_at: float | None
    confirmations: int
    parent: str | None
    artifact_id: str | None
    error: str | None


class RollbackResult(BaseModel):
    category: str
    left: str  # the version rolled back from
    artifact_id: str  # the version now live
    request_id: str


class VersionRecord(BaseModel):
    """One version of a category: what it added to its parent (an update), or that it was fitted."""

    artifact_id: str
    created_at: str
    parent: str | None
    added_goods: int
    added_defects: int
    held_out: int
    scoring: str | None
    parent_scoring: str | None
    notes: list[str]
