"""Batches a coordinator's audit writes: task updates, events and job fields, one flush at a time."""

import logging
import threading
import time
from typing import Any

from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from rayetl.store import audit
from rayetl.store.audit import JobEvent, TaskUpdate

__all__ = ["AuditBuffer", "StaleAttempt"]

logger = logging.getLogger(__name__)


class StaleAttempt(Exception):
    """The job moved on (finished, cancelled or restarted) without this coordinator."""


class AuditBuffer:
    """Collects writes in memory and flushes them in one transaction every flush_every_s.

    A 2,000-task stage then costs a handful of round trips, not 2,000: updates of the same task
    within one flush collapse into its latest state.
    """

    def __init__(self, pool: ConnectionPool, job_id: str, attempt: int, *, flush_every_s: float):
        self._pool = pool
        self._job_id = job_id
        self._attempt = attempt
        self._flush_every_s = flush_every_s
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskUpdate] = {}
        self._events: list[JobEvent] = []
        self._job_fields: dict[str, Any] = {}
        self._progress: dict[str, BaseModel] | None = None
        self._progress_changed = False
        self._last_flush = time.monotonic()

    def track_progress(self, progress: dict[str, BaseModel]) -> None:
        """Write these stage counters with the next flush after each progress_changed()."""
        self._progress = progress
        self._progress_changed = True

    def progress_changed(self) -> None:
        """The tracked counters moved; an idle job writes nothing, so the janitor sees it idle."""
        self._progress_changed = True

    def task(self, update: TaskUpdate) -> None:
        """Record the latest state of a task."""
        with self._lock:
            self._tasks[update.id] = update

    def event(
        self, event: str, *, stage: str | None = None, task_key: str | None = None, **detail: Any
    ) -> None:
        """Append an event."""
        with self._lock:
            self._events.append(JobEvent(self._job_id, self._attempt, event, stage, task_key, detail))

    def job(self, **fields: Any) -> None:
        """Set fields of the job row."""
        with self._lock:
            self._job_fields.update(fields)

    def maybe_flush(self) -> None:
        """Flush if the last flush is older than the interval."""
        if time.monotonic() - self._last_flush >= self._flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered in one transaction; raises StaleAttempt if the job moved on."""
        with self._lock:
            tasks, events, fields = self._tasks, self._events, self._job_fields
            self._tasks, self._events, self._job_fields = {}, [], {}
            if self._progress_changed and self._progress is not None:
                fields["stage_progress"] = {name: p.model_dump() for name, p in self._progress.items()}
            self._progress_changed = False
        self._last_flush = time.monotonic()
        if not (tasks or events or fields):
            return
        try:
            with self._pool.connection() as conn, conn.transaction():
                current = audit.update_job(conn, self._job_id, self._attempt, **fields)
                if not current:
                    raise StaleAttempt(self._job_id)
                audit.update_tasks(conn, tasks.values())
                audit.add_events(conn, events)
        except StaleAttempt:
            raise
        except Exception:
            # Keep what failed to be written for the next flush; newer task states win.
            with self._lock:
                self._progress_changed = True
                self._tasks = {**tasks, **self._tasks}
                self._events = events + self._events
                self._job_fields = {**fields, **self._job_fields}
            raise
