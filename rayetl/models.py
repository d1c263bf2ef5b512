"""Shared pydantic models: statuses and the rows of the audit trail."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "EventRecord",
    "JobRecord",
    "JobStatus",
    "StageProgress",
    "TaskRecord",
    "TaskStatus",
]


class JobStatus(StrEnum):
    """Life cycle of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change without a new attempt."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class TaskStatus(StrEnum):
    """Life cycle of a task; a task waiting for its retry is queued again."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StageProgress(BaseModel):
    """Counters of one stage, kept current while it runs ("137/400")."""

    status: str = "pending"
    total: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0

    def __str__(self) -> str:
        return f"{self.completed}/{self.total}"


class JobRecord(BaseModel):
    """A row of rayetl.jobs."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    job_type: str
    params: dict[str, Any]
    status: JobStatus
    attempt: int
    current_stage: str | None
    stage_index: int
    total_stages: int
    stage_progress: dict[str, StageProgress]
    result: dict[str, Any] | None
    error: str | None
    resumes: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TaskRecord(BaseModel):
    """A row of rayetl.tasks."""

    id: str
    job_id: str
    stage: str
    task_key: str
    task_type: str
    status: TaskStatus
    attempt: int
    retryable: bool | None
    error: str | None
    result: dict[str, Any] | None
    node: str | None
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None


class EventRecord(BaseModel):
    """A row of the append-only rayetl.job_events log."""

    id: int
    job_id: str
    attempt: int
    event: str
    stage: str | None
    task_key: str | None
    detail: dict[str, Any]
    created_at: datetime
