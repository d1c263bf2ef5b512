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

    def run(self, specs: list[TaskSpec]) -> None:
        """Run every spec to completion; raises StageFailed or JobCancelled."""
        pending = deque((spec, 1) for spec in specs)
        try:
            while pending or self._in_flight or self._retries:
                if self.cancel.is_set():
                    raise JobCancelled()
                pending.extend(self._retries.pop_due())
                while pending and len(self._in_flight) < self.settings.max_tasks_in_flight:
                    self._launch(*pending.popleft())
                if self._in_flight:
                    self._collect()
                else:
                    time.sleep(min(_WAIT_S, self._retries.seconds_to_next() or _WAIT_S))
                self.buffer.maybe_flush()
        except BaseException:
            for launched in self._in_flight.values():
                ray.cancel(launched.data_ref, force=False, recursive=True)
            raise

    def _launch(self, spec: TaskSpec, attempt: int) -> None:
        ctx = TaskContext(
            self.job_id, self.job_type, self.stage.name, spec.key, attempt, self.job_attempt, self.settings
        )
        data_ref, report_ref = execute_task.options(
            name=task_name(self.job_type, self.stage.name, spec.key), num_cpus=self.stage.num_cpus
        ).remote(self.stage.run, ctx, self.stage.durable, *spec.args, **spec.kwargs)
        self._in_flight[report_ref] = _Launched(spec, attempt, data_ref)
        self._record(spec.key, TaskStatus.RUNNING, attempt, started_at=datetime.now(UTC))

    def _collect(self) -> None:
        """Settle whatever finished within a short wait, in completion order."""
        ready, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=_WAIT_S)
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

    def _record(self, key: str, status: TaskStatus, attempt: int, **fields: Any) -> None:
        self.buffer.task(TaskUpdate(task_id(self.job_id, self.stage.name, key), status, attempt, **fields))
        self.buffer.progress_changed()
