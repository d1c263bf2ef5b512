"""The janitor: resumes or fails jobs whose coordinator is gone, after asking Ray, never on time alone."""

import functools
import logging
import threading
from dataclasses import dataclass

import ray

from rayetl.actors.cleanup import clean_up
from rayetl.actors.host import coordinator_state
from rayetl.actors.runtime import JANITOR_NAME, ensure_detached
from rayetl.actors.submission import find_coordinator, record_event, start_coordinator
from rayetl.logs import configure_service_logging
from rayetl.models import JobRecord, JobStatus
from rayetl.pipelines import get_job_type
from rayetl.settings import Settings
from rayetl.store import audit
from rayetl.store.db import open_pool

__all__ = ["Janitor", "ensure_janitor"]

logger = logging.getLogger(__name__)

_PING_TIMEOUT_S = 10


@dataclass(frozen=True)
class Decision:
    """What the janitor did about one stale job."""

    job_id: str
    action: str  # "alive", "resumed" or "failed"
    reason: str


def _is_coordinator_alive(job: JobRecord, settings: Settings) -> bool:
    coordinator = find_coordinator(job, settings)
    return coordinator is not None and coordinator_state(coordinator, timeout_s=_PING_TIMEOUT_S) == "running"


@ray.remote(num_cpus=0, max_concurrency=2)
class Janitor:
    """A long-lived actor that sweeps for stale jobs every janitor_interval_s."""

    def __init__(self, settings: Settings):
        configure_service_logging()
        self._settings = settings
        self._pool = open_pool(settings, min_size=1, max_size=2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="janitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._settings.janitor_interval_s):
            try:
                self.sweep()
            except Exception:
                logger.exception("janitor sweep failed; trying again next interval")

    def sweep(self) -> list[Decision]:
        """Look at every job that has not moved for janitor_stale_after_s and act on it."""
        with self._pool.connection() as conn:
            stale = audit.find_stale_jobs(conn, idle_s=self._settings.janitor_stale_after_s)
        return [self._decide(job) for job in stale]

    def _decide(self, job: JobRecord) -> Decision:
        if _is_coordinator_alive(job, self._settings):
            return Decision(job.id, "alive", "coordinator answers; the job is only slow")
        with self._pool.connection() as conn:
            if job.resumes < self._settings.janitor_max_resumes:
                reason = f"coordinator of attempt {job.attempt} is gone; resuming from the last durable stage"
                if audit.mark_resumed(conn, job.id, job.attempt, reason=reason):
                    start_coordinator(job, self._settings)
                    logger.warning("job %s: %s", job.id[:12], reason)
                    return Decision(job.id, "resumed", reason)
                return Decision(job.id, "alive", "the job moved on while the janitor looked")
            reason = (
                f"coordinator lost {job.resumes + 1} times; the janitor failed the job. "
                f"POST /api/jobs/{job.id}/retry runs it again"
            )
            audit.finish_job(
                conn, job.id, job.attempt, JobStatus.FAILED, error=reason, detail={"by": "janitor"}
            )
        logger.error("job %s: %s", job.id[:12], reason)
        record = functools.partial(record_event, self._pool, job)
        clean_up(get_job_type(job.job_type), job, self._settings, record)
        return Decision(job.id, "failed", reason)


def ensure_janitor(settings: Settings):
    """The cluster's janitor, started if it is not running yet."""
    return ensure_detached(Janitor, JANITOR_NAME, settings, settings)
