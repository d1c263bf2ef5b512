"""After a failed or cancelled attempt: run the job type's cleanup, and record what happened."""

import logging
from collections.abc import Callable
from typing import Any

from rayetl.actors import retry
from rayetl.models import JobRecord
from rayetl.pipelines.contract import JobType
from rayetl.settings import Settings

__all__ = ["clean_up"]

logger = logging.getLogger(__name__)


def clean_up(job_type: JobType, job: JobRecord, settings: Settings, record: Callable[..., Any]) -> None:
    """Remove what the attempt left half-done; never raises (the job's own error is what matters).

    record(event, **detail) appends an event to the job's log: `cleaned_up` or `cleanup_failed`.
    """
    if job_type.cleanup is None:
        return
    try:
        params = job_type.params.model_validate(job.params)
        job_type.cleanup(params, job.id, settings)
    except Exception as exc:
        logger.exception("job %s: cleanup failed", job.id[:12])
        record("cleanup_failed", error=retry.describe(exc))
    else:
        record("cleaned_up")
