"""One stage's tasks in flight: launch, collect in completion order, retry, record."""

import hashlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ray

from rayetl.actors import retry
from rayetl.actors.audit_buffer import AuditBuffer
from rayetl.actors.runtime import task_name
from rayetl.actors.schedule import RetryQueue
from rayetl.actors.tasks import execute_task
from rayetl.models import StageProgress, TaskStatus
from rayetl.pipelines.contract import Stage, TaskContext, TaskSpec
from rayetl.settings import Settings
from rayetl.store.audit import TaskUpdate

__all__ = ["JobCancelled", "StageFailed", "StageRun", "resolve_handles", "task_id"]

logger = logging.getLogger(__name__)

_WAIT_S = 0.1


def task_id(job_id: str, stage: str, key: str) -> str:
    """Deterministic task id: the same task of the same job always has the same row."""
    return hashlib.sha256(f"{job_id}\x00{stage}\x00{key}".encode()).hexdigest()[:32]


class JobCancelled(Exception):
    """A cancel request reached the coordinator."""


class StageFailed(Exception):
    """A task failed for good, so its stage and the job fail."""


@dataclass
class _Launched:
    spec: TaskSpec
    attempt: int
    data_ref: Any


def resolve_handles(handles: list[Any]) -> list[Any]:
    """Values behind stage outputs: ObjectRefs are fetched (in one call), plain values pass."""
    refs = [h for h in handles if isinstance(h, ray.ObjectRef)]
    fetched = iter(ray.get(refs))
    return [next(fetched) if isinstance(h, ray.ObjectRef) else h for h in handles]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass
class StageRun:
    """Runs the planned tasks of one stage, at most max_tasks_in_flight at once."""

    job_id: str
    job_type: str
    job_attempt: int
    stage: Stage
    settings: Settings
    buffer: AuditBuffer
    progress: StageProgress
    cancel: threading.Event

    def __post_init__(self) -> None:
        self.handles: dict[str, Any] = {}
        self.summaries: dict[str, dict] = {}
        self._retries = RetryQueue()
        self._in_flight: dict[Any, _Launched] = {}
        self._pending: deque[tuple[TaskSpec, int]] = deque()

    def run(self, specs: list[TaskSpec]) -> None:
        """Run every spec to completion; raises StageFailed or JobCancelled."""
        self.add(specs)
        try:
            while self.busy:
                self.step()
        except BaseException:
            self.stop()
            raise

    @property
    def busy(self) -> bool:
        """Whether some task is waiting, running or due for a retry."""
        return bool(self._pending or self._in_flight or self._retries)

    @property
    def backlog(self) -> int:
        """Tasks added but not finished yet."""
        return len(self._pending) + len(self._in_flight) + len(self._retries)

    def add(self, specs: list[TaskSpec]) -> None:
        """Queue more tasks; they start within the in-flight limit at the next step."""
        self._pending.extend((spec, 1) for spec in specs)

    def step(self, wait_s: float = _WAIT_S) -> None:
        """Start what may start, settle what finished within wait_s; raises StageFailed/JobCancelled."""
        if self.cancel.is_set():
            raise JobCancelled()
        self._pending.extend(self._retries.pop_due())
        while self._pending and len(self._in_flight) < self.settings.max_tasks_in_flight:
            self._launch(*self._pending.popleft())
        if self._in_flight:
            self._collect(wait_s)
        elif self._retries:
            time.sleep(min(wait_s, self._retries.seconds_to_next() or wait_s))
        self.buffer.maybe_flush()

    def stop(self) -> None:
        """Cancel the tasks still running (the stage or the job ended without them)."""
        for launched in self._in_flight.values():
            ray.cancel(launched.data_ref, force=False, recursive=True)
        self._in_flight.clear()
        self._pending.clear()
        self._retries = RetryQueue()

    def _context(self, key: str, attempt: int) -> TaskContext:
        return TaskContext(
            self.job_id, self.job_type, self.stage.name, key, attempt, self.job_attempt, self.settings
        )

    def _launch(self, spec: TaskSpec, attempt: int) -> None:
        ctx = self._context(spec.key, attempt)
        data_ref, report_ref = execute_task.options(
            name=task_name(self.job_type, self.stage.name, spec.key), num_cpus=self.stage.num_cpus
        ).remote(self.stage.run, ctx, self.stage.durable, *spec.args, **spec.kwargs)
        self._in_flight[report_ref] = _Launched(spec, attempt, data_ref)
        self._record(spec.key, TaskStatus.RUNNING, attempt, started_at=self._now())

    def _collect(self, wait_s: float) -> None:
        """Settle whatever finished within wait_s, in completion order."""
        ready, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=wait_s)
        for report_ref in ready:
            launched = self._in_flight.pop(report_ref)
            try:
                report = ray.get(report_ref)
            except Exception as exc:
                self._fail_or_retry(launched, exc)
            else:
                self._complete(launched, report)

    def _complete(self, launched: _Launched, report: dict[str, Any]) -> None:
        key = launched.spec.key
        # Durable outputs are plain values from here on; others stay in the object store.
        self.handles[key] = report["output"] if self.stage.durable else launched.data_ref
        self.summaries[key] = report["summary"]
        self._record_completed(launched, report)

    def _record_completed(self, launched: _Launched, report: dict[str, Any]) -> None:
        key = launched.spec.key
        self.progress.completed += 1
        self._record(
            key,
            TaskStatus.COMPLETED,
            launched.attempt,
            result=report["summary"],
            output=report["output"],
            node=report["node"],
            worker=report["worker"],
            started_at=_utc(report["started_at"]),
            finished_at=_utc(report["finished_at"]),
            duration_s=report["finished_at"] - report["started_at"],
        )

    def _fail_or_retry(self, launched: _Launched, exc: Exception) -> None:
        key, attempt, max_attempts = launched.spec.key, launched.attempt, self.settings.task_max_attempts
        verdict = retry.classify(exc, attempt, max_attempts)
        message = retry.describe(exc)
        now = datetime.now(UTC)
        if verdict.retry:
            delay = retry.backoff_s(
                attempt, base_s=self.settings.retry_backoff_s, max_s=self.settings.retry_backoff_max_s
            )
            self._retries.push((launched.spec, attempt + 1), delay)
            self.progress.retried += 1
            self._record(key, TaskStatus.QUEUED, attempt, retryable=True, error=message, finished_at=now)
            self.buffer.event(
                "task_retried", stage=self.stage.name, task_key=key, attempt=attempt,
                kind=verdict.kind, error=message, delay_s=round(delay, 3),
            )  # fmt: skip
            logger.warning(
                "job %s: task %s failed (%s); attempt %d/%d next",
                self.job_id[:12],
                key,
                message,
                attempt + 1,
                max_attempts,
            )
            return
        self.progress.failed += 1
        self._record(key, TaskStatus.FAILED, attempt, retryable=False, error=message, finished_at=now)
        self.buffer.event(
            "task_failed",
            stage=self.stage.name,
            task_key=key,
            attempt=attempt,
            kind=verdict.kind,
            error=message,
        )
        raise StageFailed(f"task {key!r} failed after {attempt} attempt(s): {message}") from exc

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC)

    def _record(self, key: str, status: TaskStatus, attempt: int, **fields: Any) -> None:
        self.buffer.task(TaskUpdate(task_id(self.job_id, self.stage.name, key), status, attempt, **fields))
        self.buffer.progress_changed()
