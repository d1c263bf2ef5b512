"""Submitting, cancelling, retrying and waiting for jobs: the only way in to the engine."""

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray
from psycopg import Connection
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from rayetl.actors.cleanup import clean_up
from rayetl.actors.host import ensure_host, find_hosted_coordinator
from rayetl.actors.runtime import coordinator_name
from rayetl.errors import Conflict, InvalidRequest, NotFound
from rayetl.models import JobRecord, JobStatus
from rayetl.pipelines import get_job_type
from rayetl.pipelines.contract import JobParams, JobType
from rayetl.settings import Settings
from rayetl.store import audit
from rayetl.store.audit import JobEvent

__all__ = [
    "Submission",
    "cancel_job",
    "find_coordinator",
    "parse_params",
    "retry_job",
    "start_coordinator",
    "submit_job",
    "wait_for_job",
]

logger = logging.getLogger(__name__)

_HOST_TIMEOUT_S = 60  # a host being (re)started on a busy node takes a few seconds


@dataclass(frozen=True)
class Submission:
    """The job a submission refers to; idempotent when it already existed and was left as is."""

    job: JobRecord
    idempotent: bool


def parse_params(job_type: JobType, raw: Mapping[str, Any], settings: Settings) -> JobParams:
    """Validate params, turning pydantic's errors into one message that names each field."""
    try:
        return job_type.parse_params(raw, settings)
    except ValidationError as exc:
        fields = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(params)", "message": err["msg"]}
            for err in exc.errors(include_url=False)
        ]
        listed = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        raise InvalidRequest(
            f"invalid parameters for {job_type.name}: {listed}. "
            f"GET /api/job-types shows the parameters of {job_type.name}",
            fields=fields,
        ) from None


def submit_job(
    job_type_name: str, raw_params: Mapping[str, Any], *, settings: Settings, pool: ConnectionPool
) -> Submission:
    """Create the job (or return it as it is) and make sure a coordinator runs it."""
    job_type = get_job_type(job_type_name)
    params = parse_params(job_type, raw_params, settings)
    job_id = job_type.job_id(params)
    with pool.connection() as conn:
        existing = audit.get_job(conn, job_id)
    if existing is not None and existing.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        return Submission(existing, idempotent=True)
    if job_type.preflight is not None:
        job_type.preflight(params, settings)
    with pool.connection() as conn:
        job, created = audit.insert_job(
            conn,
            job_id=job_id,
            job_type=job_type.name,
            params=params.model_dump(mode="json"),
            total_stages=len(job_type.stages),
        )
        if not created:
            # Submitting a failed or cancelled job again means "try again": a new attempt.
            restarted = audit.restart_job(conn, job_id, from_scratch=True, event="resubmitted")
            if restarted is None:
                return Submission(audit.get_job(conn, job_id), idempotent=True)
            job = restarted
    start_coordinator(job, settings)
    return Submission(job, idempotent=False)


def start_coordinator(job: JobRecord, settings: Settings) -> None:
    """Have the coordinator host create the job attempt's coordinator unless it already exists."""
    host = ensure_host(settings)
    ray.get(host.start.remote(job.id, job.job_type, job.attempt, settings), timeout=_HOST_TIMEOUT_S)
    logger.info("job %s: coordinator started for attempt %d", job.id[:12], job.attempt)


def find_coordinator(job: JobRecord, settings: Settings):
    """The live coordinator of the job's current attempt, or None."""
    name = coordinator_name(job.job_type, job.id, job.attempt)
    return find_hosted_coordinator(name, settings, timeout_s=_HOST_TIMEOUT_S)


def _require_job(pool: ConnectionPool, job_id: str) -> JobRecord:
    with pool.connection() as conn:
        return _existing_job(conn, job_id)


def _existing_job(conn: Connection, job_id: str) -> JobRecord:
    job = audit.get_job(conn, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id!r} (GET /api/jobs lists the jobs)")
    return job


def cancel_job(job_id: str, *, settings: Settings, pool: ConnectionPool, timeout_s: float = 30) -> JobRecord:
    """Stop a queued or running job; its tasks are cancelled and nothing stays open."""
    job = _require_job(pool, job_id)
    if job.status.is_terminal:
        raise Conflict(
            f"job {job_id[:12]} is already {job.status.value}; only queued or running jobs can be cancelled"
        )
    coordinator = find_coordinator(job, settings)
    if coordinator is not None:
        try:
            ray.get(coordinator.cancel.remote(), timeout=10)
            return wait_for_job(job_id, pool=pool, timeout_s=timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, TimeoutError):
            logger.warning(
                "job %s: coordinator did not take the cancel; cancelling in the database", job_id[:12]
            )
    with pool.connection() as conn:
        audit.finish_job(
            conn, job.id, job.attempt, JobStatus.CANCELLED, error="cancelled by request", detail={"by": "api"}
        )
    clean_up(get_job_type(job.job_type), job, settings, functools.partial(record_event, pool, job))
    with pool.connection() as conn:
        return audit.get_job(conn, job_id)


def retry_job(job_id: str, *, settings: Settings, pool: ConnectionPool) -> JobRecord:
    """Run a failed or cancelled job again from the stage where it stopped."""
    job = _require_job(pool, job_id)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise Conflict(
            f"job {job_id[:12]} is {job.status.value}; only failed or cancelled jobs can be retried"
        )
    with pool.connection() as conn:
        restarted = audit.restart_job(conn, job_id, from_scratch=False, event="retried")
    if restarted is None:
        raise Conflict(f"job {job_id[:12]} changed while retrying it; look at its status and try again")
    start_coordinator(restarted, settings)
    return restarted


def wait_for_job(job_id: str, *, pool: ConnectionPool, timeout_s: float, recheck_s: float = 1.0) -> JobRecord:
    """Wait until the job ends; TimeoutError after timeout_s.

    Woken by the notification the job's end sends as it commits (audit.job_ends), so a waiter
    learns of it at once instead of at its next poll; the job is read again every recheck_s anyway.
    """
    deadline = time.monotonic() + timeout_s
    with pool.connection() as conn, audit.job_ends(conn) as wait_for_an_end:
        while True:
            with conn.transaction():
                job = _existing_job(conn, job_id)
            if job.status.is_terminal:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_id[:12]} still {job.status.value} after {timeout_s:.0f}s")
            wait_for_an_end(min(recheck_s, remaining))


def record_event(pool: ConnectionPool, job: JobRecord, event: str, **detail: Any) -> None:
    """Append one event to a job's log."""
    with pool.connection() as conn, conn.transaction():
        audit.add_events(conn, [JobEvent(job.id, job.attempt, event, detail=detail)])
