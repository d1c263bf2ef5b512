"""JobCoordinator: one actor per job attempt that runs the stages, records every transition."""

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ray
from pydantic import BaseModel

from rayetl.actors import retry
from rayetl.actors.audit_buffer import AuditBuffer, StaleAttempt
from rayetl.actors.cleanup import clean_up
from rayetl.actors.schedule import check_plan, resume_index
from rayetl.actors.stage_run import JobCancelled, StageFailed, StageRun, resolve_handles, task_id
from rayetl.actors.streamed_pair import StreamedPair
from rayetl.actors.tasks import warm_worker_pool
from rayetl.errors import PermanentError
from rayetl.logs import configure_service_logging
from rayetl.models import JobRecord, JobStatus, StageProgress
from rayetl.pipelines import get_job_type
from rayetl.pipelines.contract import JobParams, JobType, Stage, StageOutputs, TaskSpec
from rayetl.settings import Settings
from rayetl.store import audit
from rayetl.store.audit import NewTask
from rayetl.store.db import open_pool

__all__ = ["Assignment", "JobCoordinator", "JobRunner", "task_id"]

logger = logging.getLogger(__name__)

_LINGER_S = 2.0
_HOST_TIMEOUT_S = 5


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
        buffer.track_progress(progress)
        status, result, error = JobStatus.FAILED, None, None
        try:
            params = job_type.params.model_validate(job.params)
            start = resume_index(job_type.stages, progress)
            self._announce_start(buffer, job, job_type, start)
            outputs = self._restore_outputs(pool, job_type, start, progress)
            index = start
            while index < len(job_type.stages):
                stage = job_type.stages[index]
                specs = self._plan(stage, params, outputs)
                if not specs:
                    self._end_early(buffer, job_type, index, progress)
                    break
                if stage.streams:
                    stream = StreamedPair(self, pool, buffer, job_type, index, params, outputs, progress)
                    if not stream.run(specs):
                        self._end_early(buffer, job_type, index + 1, progress)
                        break
                    index += 2
                else:
                    outputs[stage.name] = self._run_stage(pool, buffer, job_type, index, specs, progress)
                    index += 1
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
        if status is not JobStatus.COMPLETED:
            clean_up(job_type, job, self._settings, buffer.event)
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
        return check_plan(stage, list(stage.plan(params, outputs)))

    def _end_early(self, buffer: AuditBuffer, job_type: JobType, index: int, progress) -> None:
        stage = job_type.stages[index]
        for later in job_type.stages[index:]:
            progress[later.name] = StageProgress(status="skipped")
        buffer.event("stage_empty", stage=stage.name, message="nothing to do: the job ends here")
        buffer.progress_changed()

    def begin_stage(self, pool, buffer, job_type: JobType, index: int, specs, done=()) -> StageProgress:
        """Record a stage's tasks and its start; returns its live progress."""
        stage = job_type.stages[index]
        self.add_tasks(pool, stage, index, [s for s in specs if s.key not in done], first_seq=0)
        progress = StageProgress(status="running", total=len(specs), completed=len(done))
        buffer.event("stage_started", stage=stage.name, tasks=len(specs), reused=len(done))
        buffer.job(current_stage=stage.name, stage_index=index)
        buffer.flush()
        return progress

    def add_tasks(self, pool, stage: Stage, index: int, specs: Sequence[TaskSpec], *, first_seq: int) -> None:
        """Insert the rows of planned tasks (queued)."""
        rows = [
            NewTask(
                task_id(self._job_id, stage.name, s.key),
                self._job_id,
                stage.name,
                index,
                first_seq + seq,
                s.key,
                stage.run.__name__,
            )
            for seq, s in enumerate(specs)
        ]
        with pool.connection() as conn, conn.transaction():
            audit.insert_tasks(conn, rows)

    def end_stage(self, buffer, stage: Stage, progress: StageProgress) -> None:
        """Record that a stage completed."""
        progress.status = "completed"
        buffer.progress_changed()
        buffer.event("stage_completed", stage=stage.name, tasks=progress.total, retried=progress.retried)
        buffer.flush()

    def stage_run(self, run_class, buffer, job_type: JobType, stage: Stage, progress: StageProgress):
        """A StageRun (or subclass) for one stage of this job."""
        return run_class(
            self._job_id, job_type.name, self.attempt, stage, self._settings, buffer, progress, self._cancel
        )

    def _run_stage(self, pool, buffer, job_type: JobType, index: int, specs: list[TaskSpec], progress):
        stage, started = job_type.stages[index], time.monotonic()
        reuse = stage.durable and progress[stage.name].status != "pending"
        with pool.connection() as conn:
            done = audit.durable_outputs(conn, self._job_id, stage.name) if reuse else {}
        stage_progress = progress[stage.name] = self.begin_stage(pool, buffer, job_type, index, specs, done)
        run = self.stage_run(StageRun, buffer, job_type, stage, stage_progress)
        run.handles.update(done)
        run.run([s for s in specs if s.key not in done])
        self.end_stage(buffer, stage, stage_progress)
        ordered = {s.key: run.handles[s.key] for s in specs}
        elapsed = round(time.monotonic() - started, 3)
        return StageOutputs(ordered, summaries=run.summaries, resolve=resolve_handles, elapsed_s=elapsed)

    def _finish(self, pool, buffer, status: JobStatus, *, result, error, progress) -> None:
        """Write the end of the job, retrying while the database is unreachable."""
        buffer.progress_changed()
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


@dataclass(frozen=True)
class Assignment:
    """The job attempt a coordinator runs: its name (one per attempt), the job and the settings."""

    name: str
    job_id: str
    settings: Settings


@ray.remote(num_cpus=0, max_concurrency=4)
class JobCoordinator:
    """One per job attempt, started ahead of its job by the host (see actors/host.py).

    `adopt` hands it the job, which runs in a thread so the actor still answers ping and cancel;
    the host calls adopt as a task named after the job attempt, which lasts as long as the job, so
    the dashboard shows which job a coordinator runs (an actor's own name is fixed before it has one).
    Restarted by Ray after its process died, it asks the host for its job again and resumes it.
    (Queueing run() on the actor's own handle instead was lost after a restart.)
    """

    def __init__(self, host: ray.actor.ActorHandle, token: str):
        configure_service_logging()
        self._host = host
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._assignment: Assignment | None = None
        self._runner: JobRunner | None = None
        self._thread: threading.Thread | None = None
        if ray.get_runtime_context().was_current_actor_reconstructed:
            assignment = ray.get(host.assignment.remote(token), timeout=_HOST_TIMEOUT_S)
            if assignment is not None:
                self._start(assignment)
        else:  # a spare, started while the cluster is quiet: warm the workers its job will use too
            warm_worker_pool()

    def adopt(self, assignment: Assignment) -> None:
        """Run this job attempt and return when it has ended (a second call only waits for it)."""
        self._start(assignment)
        self._thread.join()

    def _start(self, assignment: Assignment) -> None:
        with self._lock:
            if self._assignment is not None:
                return  # e.g. a restarted coordinator resumed its job before adopt arrived
            self._assignment = assignment
            self._runner = JobRunner(assignment.job_id, assignment.settings, self._cancel)
            self._thread = threading.Thread(
                target=self._run_then_exit, name=f"job-{assignment.job_id[:12]}", daemon=True
            )
            self._thread.start()

    def _run_then_exit(self) -> None:
        try:
            self._runner.run()
        except Exception:
            # The janitor finds a job whose coordinator is gone; log here for the operator.
            logger.exception("coordinator crashed")
        finally:
            self._tell_host("job_ended")
            # A finished coordinator holds nothing worth keeping; free its process. First let Ray
            # report its tasks' last events (every second), or the dashboard never sees them.
            time.sleep(_LINGER_S)
            if not self._tell_host("release"):
                ray.kill(ray.get_runtime_context().current_actor)

    def _tell_host(self, method: str) -> bool:
        """Call the host about this coordinator (release: Ray then ends this actor gracefully)."""
        try:
            ray.get(getattr(self._host, method).remote(self._assignment.name), timeout=_HOST_TIMEOUT_S)
        except ray.exceptions.RayError:
            logger.warning("could not reach the coordinator host (%s of %s)", method, self._assignment.name)
            return False
        return True

    def cancel(self) -> None:
        """Ask the job to stop: in-flight tasks are cancelled and the job ends cancelled."""
        self._cancel.set()

    def ping(self) -> dict[str, Any]:
        """Proof of life for the janitor, with what the coordinator is doing."""
        if self._runner is None:
            # Handed a job whose adopt has not run yet (on a busy node it waits for this actor to
            # start): it is about to run it. Nobody pings the spare; only coordinators with a job.
            return {"attempt": None, "stage": None, "running": True}
        return {
            "attempt": self._runner.attempt,
            "stage": self._runner.stage,
            "running": self._thread.is_alive(),
        }
