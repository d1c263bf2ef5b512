"""JobCoordinator: one actor per job attempt that runs the stages, records every transition."""

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ray
from pydantic import BaseModel

from rayetl.actors import retry
from rayetl.actors.audit_buffer import AuditBuffer, StaleAttempt
from rayetl.actors.runtime import task_name
from rayetl.actors.schedule import RetryQueue, resume_index
from rayetl.actors.tasks import execute_task
from rayetl.errors import PermanentError
from rayetl.models import JobRecord, JobStatus, StageProgress, TaskStatus
from rayetl.pipelines import get_job_type
from rayetl.pipelines.contract import JobParams, JobType, Stage, StageOutputs, TaskContext, TaskSpec
from rayetl.settings import Settings
from rayetl.store import audit
from rayetl.store.audit import NewTask, TaskUpdate
from rayetl.store.db import open_pool

__all__ = ["JobCoordinator", "JobRunner", "task_id"]

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


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class JobRunner:
    """The coordinator's work, kept apart from the actor so it reads as plain code."""

    def __init__(self, job_id: str, settings: Settings, cancel: threading.Event):
        self._job_id = job_id
        self._settings = settings
        self._cancel = cancel
        self.stage: str | None = None
        self.attempt: int | None = None

    def run(self) -> None:
        """Run the job to its end; every way out leaves it completed, failed or cancelled."""
        pool = open_pool(self._settings, min_size=1, max_size=2)
        try:
            with pool.connection() as conn:
                job = audit.get_job(conn, self._job_id)
            if job is None or job.status.is_terminal:
                return
            self.attempt = job.attempt
            self._run_attempt(pool, job)
        except StaleAttempt:
            logger.info("job %s: attempt %s was taken over; stopping", self._job_id[:12], self.attempt)
        finally:
            pool.close()

    def _run_attempt(self, pool, job: JobRecord) -> None:
        job_type = get_job_type(job.job_type)
        buffer = AuditBuffer(pool, job.id, job.attempt, flush_every_s=self._settings.progress_flush_s)
        progress = {s.name: job.stage_progress.get(s.name, StageProgress()) for s in job_type.stages}
        status, result, error = JobStatus.FAILED, None, None
        try:
            params = job_type.params.model_validate(job.params)
            start = resume_index(job_type.stages, progress)
            self._announce_start(buffer, job, job_type, start)
            outputs = self._restore_outputs(pool, job_type, start, progress)
            for index in range(start, len(job_type.stages)):
                stage = job_type.stages[index]
                specs = self._plan(stage, params, outputs)
                if not specs:
                    self._end_early(buffer, job_type, index, progress)
                    break
                outputs[stage.name] = self._run_stage(pool, buffer, job_type, index, specs, progress)
            self.stage = "finalize"
            result = _as_json(job_type.finalize(params, outputs))
            status = JobStatus.COMPLETED
        except JobCancelled:
            status, error = JobStatus.CANCELLED, "cancelled by request"
        except StaleAttempt:
            raise
        except Exception as exc:
            error = _job_error(self.stage, exc)
            logger.error("job %s failed: %s", job.id[:12], error, exc_info=not isinstance(exc, StageFailed))
            if self.stage in progress:
                progress[self.stage].status = "failed"
        self._finish(pool, buffer, status, result=result, error=error, progress=progress)

    def _announce_start(self, buffer: AuditBuffer, job: JobRecord, job_type: JobType, start: int) -> None:
        first = job_type.stages[start].name if start < len(job_type.stages) else "finalize"
        resumed = job.status is JobStatus.RUNNING
        buffer.event("job_resumed" if resumed else "job_started", from_stage=first)
        fields: dict[str, Any] = {"status": JobStatus.RUNNING.value}
        if job.started_at is None:
            fields["started_at"] = datetime.now(UTC)
        buffer.job(**fields)
        buffer.flush()
        logger.info(
            "job %s (%s): %s at stage %s",
            job.id[:12],
            job.job_type,
            "resumed" if resumed else "started",
            first,
        )

    def _restore_outputs(self, pool, job_type: JobType, start: int, progress) -> dict[str, StageOutputs]:
        """Outputs of the stages before start: durable ones come back from Postgres."""
        restored = {}
        with pool.connection() as conn:
            for stage in job_type.stages[:start]:
                kept = audit.durable_outputs(conn, self._job_id, stage.name) if stage.durable else {}
                restored[stage.name] = StageOutputs(
                    kept, resolve=_lost_outputs(stage) if not stage.durable else None
                )
        return restored

    def _plan(self, stage: Stage, params: JobParams, outputs: dict[str, StageOutputs]) -> list[TaskSpec]:
        self.stage = stage.name
        specs = list(stage.plan(params, outputs))
        keys = [s.key for s in specs]
        if len(set(keys)) != len(keys):
            raise PermanentError(f"stage {stage.name!r} planned duplicate task keys; keys must be unique")
        return specs

    def _end_early(self, buffer: AuditBuffer, job_type: JobType, index: int, progress) -> None:
        stage = job_type.stages[index]
        if not stage.empty_ok:
            raise PermanentError(
                f"stage {stage.name!r} planned no tasks, so the job would produce nothing; "
                "check the parameters (e.g. the prefix, filters or input file)"
            )
        for later in job_type.stages[index:]:
            progress[later.name] = StageProgress(status="skipped")
        buffer.event("stage_empty", stage=stage.name, message="nothing to do: the job ends here")
        buffer.job(stage_progress=_dump(progress))

    def _run_stage(self, pool, buffer, job_type: JobType, index: int, specs: list[TaskSpec], progress):
        stage = job_type.stages[index]
        reuse = stage.durable and progress[stage.name].status != "pending"
        with pool.connection() as conn:
            done = audit.durable_outputs(conn, self._job_id, stage.name) if reuse else {}
        to_run = [s for s in specs if s.key not in done]
        with pool.connection() as conn, conn.transaction():
            audit.insert_tasks(
                conn,
                [
                    NewTask(
                        task_id(self._job_id, stage.name, s.key),
                        self._job_id,
                        stage.name,
                        index,
                        seq,
                        s.key,
                        stage.run.__name__,
                    )
                    for seq, s in enumerate(specs)
                    if s.key not in done
                ],
            )
        stage_progress = progress[stage.name] = StageProgress(
            status="running", total=len(specs), completed=len(done)
        )
        buffer.event("stage_started", stage=stage.name, tasks=len(specs), reused=len(done))
        buffer.job(current_stage=stage.name, stage_index=index, stage_progress=_dump(progress))
        buffer.flush()

        handles, summaries = dict(done), {}
        self._execute(buffer, job_type, stage, to_run, handles, summaries, stage_progress, progress)

        stage_progress.status = "completed"
        buffer.event("stage_completed", stage=stage.name, tasks=len(specs), retried=stage_progress.retried)
        buffer.job(stage_progress=_dump(progress))
        buffer.flush()
        ordered = {s.key: handles[s.key] for s in specs}
        return StageOutputs(ordered, summaries=summaries, resolve=ray.get)

    def _execute(self, buffer, job_type, stage, to_run, handles, summaries, stage_progress, progress) -> None:
        """Launch the stage's tasks, at most max_tasks_in_flight at once; retry transient failures."""
        pending, retries = deque((s, 1) for s in to_run), RetryQueue()
        in_flight: dict[Any, _Launched] = {}
        cap, max_attempts = self._settings.max_tasks_in_flight, self._settings.task_max_attempts
        try:
            while pending or in_flight or retries:
                if self._cancel.is_set():
                    raise JobCancelled()
                pending.extend(retries.pop_due())
                while pending and len(in_flight) < cap:
                    spec, attempt = pending.popleft()
                    report_ref, launched = self._launch(job_type, stage, spec, attempt)
                    in_flight[report_ref] = launched
                    buffer.task(
                        TaskUpdate(
                            task_id(self._job_id, stage.name, spec.key),
                            TaskStatus.RUNNING,
                            attempt,
                            started_at=datetime.now(UTC),
                        )
                    )
                if not in_flight:
                    time.sleep(min(_WAIT_S, retries.seconds_to_next() or _WAIT_S))
                    buffer.maybe_flush()
                    continue
                ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=_WAIT_S)
                for report_ref in ready:
                    launched = in_flight.pop(report_ref)
                    self._settle(
                        buffer,
                        stage,
                        launched,
                        report_ref,
                        handles,
                        summaries,
                        stage_progress,
                        retries,
                        max_attempts,
                    )
                buffer.job(stage_progress=_dump(progress))
                buffer.maybe_flush()
        except BaseException:
            for launched in in_flight.values():
                ray.cancel(launched.data_ref, force=False, recursive=True)
            raise

    def _launch(self, job_type: JobType, stage: Stage, spec: TaskSpec, attempt: int):
        ctx = TaskContext(
            self._job_id, job_type.name, stage.name, spec.key, attempt, self.attempt, self._settings
        )
        data_ref, report_ref = execute_task.options(
            name=task_name(job_type.name, stage.name, spec.key), num_cpus=stage.num_cpus
        ).remote(stage.run, ctx, stage.durable, *spec.args, **spec.kwargs)
        return report_ref, _Launched(spec, attempt, data_ref)

    def _settle(
        self,
        buffer,
        stage,
        launched,
        report_ref,
        handles,
        summaries,
        stage_progress,
        retries,
        max_attempts,
    ):
        key, attempt = launched.spec.key, launched.attempt
        tid = task_id(self._job_id, stage.name, key)
        try:
            report = ray.get(report_ref)
        except Exception as exc:
            verdict = retry.classify(exc, attempt, max_attempts)
            message = retry.describe(exc)
            now = datetime.now(UTC)
            if verdict.retry:
                delay = retry.backoff_s(
                    attempt,
                    base_s=self._settings.retry_backoff_s,
                    max_s=self._settings.retry_backoff_max_s,
                )
                retries.push((launched.spec, attempt + 1), delay)
                stage_progress.retried += 1
                buffer.task(
                    TaskUpdate(
                        tid,
                        TaskStatus.QUEUED,
                        attempt,
                        retryable=True,
                        error=message,
                        finished_at=now,
                    )
                )
                buffer.event(
                    "task_retried",
                    stage=stage.name,
                    task_key=key,
                    attempt=attempt,
                    kind=verdict.kind,
                    error=message,
                    delay_s=round(delay, 3),
                )
                logger.warning(
                    "job %s: task %s failed (%s), retry %d/%d",
                    self._job_id[:12],
                    key,
                    message,
                    attempt + 1,
                    max_attempts,
                )
                return
            stage_progress.failed += 1
            buffer.task(
                TaskUpdate(tid, TaskStatus.FAILED, attempt, retryable=False, error=message, finished_at=now)
            )
            buffer.event(
                "task_failed",
                stage=stage.name,
                task_key=key,
                attempt=attempt,
                kind=verdict.kind,
                error=message,
            )
            raise StageFailed(f"task {key!r} failed after {attempt} attempt(s): {message}") from exc
        handles[key] = report["output"] if stage.durable else launched.data_ref
        summaries[key] = report["summary"]
        stage_progress.completed += 1
        buffer.task(
            TaskUpdate(
                tid,
                TaskStatus.COMPLETED,
                attempt,
                result=report["summary"],
                output=report["output"],
                node=report["node"],
                worker=report["worker"],
                started_at=_utc(report["started_at"]),
                finished_at=_utc(report["finished_at"]),
                duration_s=report["finished_at"] - report["started_at"],
            )
        )

    def _finish(self, pool, buffer, status: JobStatus, *, result, error, progress) -> None:
        """Write the end of the job, retrying while the database is unreachable."""
        buffer.job(stage_progress=_dump(progress))
        deadline = time.monotonic() + 60
        while True:
            try:
                buffer.flush()
                with pool.connection() as conn:
                    audit.finish_job(
                        conn,
                        self._job_id,
                        self.attempt,
                        status,
                        result=result,
                        error=error,
                        stage_progress=_dump(progress),
                    )
                logger.info("job %s: %s", self._job_id[:12], status.value)
                return
            except StaleAttempt:
                raise
            except Exception:
                if time.monotonic() > deadline:
                    raise
                logger.warning(
                    "job %s: could not record its end yet; retrying",
                    self._job_id[:12],
                    exc_info=True,
                )
                time.sleep(1)


def _dump(progress: dict[str, StageProgress]) -> dict[str, Any]:
    return {name: p.model_dump() for name, p in progress.items()}


def _as_json(result: Any) -> dict[str, Any]:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return dict(result)


def _job_error(stage: str | None, exc: BaseException) -> str:
    where = f"stage {stage!r}: " if stage else ""
    return f"{where}{exc}" if isinstance(exc, StageFailed) else f"{where}{retry.describe(exc)}"


def _lost_outputs(stage: Stage):
    def resolve(handles: Sequence[Any]) -> list:
        raise PermanentError(
            f"outputs of stage {stage.name!r} were lost with the previous coordinator; "
            "retry the job to run it again"
        )

    return resolve


@ray.remote(num_cpus=0, max_concurrency=4)
class JobCoordinator:
    """One per job attempt: runs the job in a thread started by __init__, so a restart resumes it."""

    def __init__(self, job_id: str, settings: Settings):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._cancel = threading.Event()
        self._runner = JobRunner(job_id, settings, self._cancel)
        self._thread = threading.Thread(target=self._run_then_exit, name=f"job-{job_id[:12]}", daemon=True)
        self._thread.start()

    def _run_then_exit(self) -> None:
        try:
            self._runner.run()
        except Exception:
            # The janitor finds a job whose coordinator is gone; log here for the operator.
            logger.exception("coordinator crashed")
        finally:
            ray.kill(ray.get_runtime_context().current_actor)

    def cancel(self) -> None:
        """Ask the job to stop: in-flight tasks are cancelled and the job ends cancelled."""
        self._cancel.set()

    def ping(self) -> dict[str, Any]:
        """Proof of life for the janitor, with what the coordinator is doing."""
        return {
            "attempt": self._runner.attempt,
            "stage": self._runner.stage,
            "running": self._thread.is_alive(),
        }
