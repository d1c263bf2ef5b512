"""Audit trail in Postgres: jobs, tasks and the append-only event log, written in batches."""

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import Connection, sql
from psycopg.types.json import Jsonb

from rayetl.models import EventRecord, JobRecord, JobStatus, TaskRecord, TaskStatus

__all__ = [
    "JobEvent",
    "NewTask",
    "TaskUpdate",
    "add_events",
    "count_jobs",
    "count_tasks",
    "count_tasks_by_status",
    "durable_outputs",
    "find_stale_jobs",
    "finish_job",
    "get_job",
    "insert_job",
    "insert_tasks",
    "job_ends",
    "list_events",
    "list_jobs",
    "list_tasks",
    "mark_resumed",
    "restart_job",
    "update_job",
    "update_tasks",
]

_OPEN_TASK_STATUSES = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
# finish_job NOTIFYs it with the job's id; PostgreSQL delivers it to listeners when the end commits.
_JOB_ENDED_CHANNEL = "rayetl_job_ended"


@dataclass(frozen=True)
class JobEvent:
    """One line of the event log, waiting to be written."""

    job_id: str
    attempt: int
    event: str
    stage: str | None = None
    task_key: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewTask:
    """A planned task, written as queued before it is launched."""

    id: str
    job_id: str
    stage: str
    stage_index: int
    seq: int
    task_key: str
    task_type: str


@dataclass
class TaskUpdate:
    """The latest known state of a task; later updates of the same task replace earlier ones."""

    id: str
    status: TaskStatus
    attempt: int
    retryable: bool | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    output: Any = None
    node: str | None = None
    worker: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None


# -- jobs ------------------------------------------------------------------------------------


def insert_job(
    conn: Connection, *, job_id: str, job_type: str, params: dict[str, Any], total_stages: int
) -> tuple[JobRecord, bool]:
    """Create the job unless it exists; returns the row and whether this call created it."""
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO rayetl.jobs (id, job_type, params, status, total_stages)
               VALUES (%s, %s, %s, 'queued', %s)
               ON CONFLICT (id) DO NOTHING RETURNING *""",
            (job_id, job_type, Jsonb(params), total_stages),
        ).fetchone()
        if row is None:
            return get_job(conn, job_id), False
        add_events(conn, [JobEvent(job_id, 1, "submitted", detail={"params": params})])
    return JobRecord.model_validate(row), True


def restart_job(conn: Connection, job_id: str, *, from_scratch: bool, event: str) -> JobRecord | None:
    """Start a new attempt of a failed or cancelled job; None if it is not in such a state."""
    reset_stages = sql.SQL(
        ", stage_index = 0, current_stage = NULL, stage_progress = '{}'::jsonb" if from_scratch else ""
    )
    with conn.transaction():
        row = conn.execute(
            sql.SQL(
                """UPDATE rayetl.jobs SET status = 'queued', attempt = attempt + 1, error = NULL,
                          result = NULL, resumes = 0, finished_at = NULL, updated_at = now() {}
                   WHERE id = %s AND status IN ('failed', 'cancelled') RETURNING *"""
            ).format(reset_stages),
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        job = JobRecord.model_validate(row)
        add_events(conn, [JobEvent(job_id, job.attempt, event, detail={"from_scratch": from_scratch})])
    return job


def get_job(conn: Connection, job_id: str) -> JobRecord | None:
    """The job, or None."""
    row = conn.execute("SELECT * FROM rayetl.jobs WHERE id = %s", (job_id,)).fetchone()
    return JobRecord.model_validate(row) if row else None


def _job_filters(status: str | None, job_type: str | None) -> tuple[sql.Composable, list[Any]]:
    clauses, values = [], []
    if status:
        clauses.append(sql.SQL("status = %s"))
        values.append(status)
    if job_type:
        clauses.append(sql.SQL("job_type = %s"))
        values.append(job_type)
    where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
    return where, values


def list_jobs(
    conn: Connection,
    *,
    status: str | None = None,
    job_type: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[JobRecord]:
    """Jobs, newest first."""
    where, values = _job_filters(status, job_type)
    query = sql.SQL("SELECT * FROM rayetl.jobs {} ORDER BY created_at DESC, id LIMIT %s OFFSET %s")
    rows = conn.execute(query.format(where), [*values, limit, offset]).fetchall()
    return [JobRecord.model_validate(r) for r in rows]


def count_jobs(conn: Connection, *, status: str | None = None, job_type: str | None = None) -> int:
    """How many jobs match the filters."""
    where, values = _job_filters(status, job_type)
    return conn.execute(sql.SQL("SELECT count(*) AS n FROM rayetl.jobs {}").format(where), values).fetchone()[
        "n"
    ]


def update_job(conn: Connection, job_id: str, attempt: int, **fields: Any) -> bool:
    """Set fields of a job that is still at this attempt and not finished; False if it moved on."""
    assignments = [sql.SQL("updated_at = now()")]
    values = []
    for name, value in fields.items():
        assignments.append(sql.SQL("{} = %s").format(sql.Identifier(name)))
        values.append(Jsonb(value) if isinstance(value, dict) else value)
    query = sql.SQL(
        """UPDATE rayetl.jobs SET {} WHERE id = %s AND attempt = %s
           AND status IN ('queued', 'running')"""
    ).format(sql.SQL(", ").join(assignments))
    return conn.execute(query, [*values, job_id, attempt]).rowcount == 1


def finish_job(
    conn: Connection,
    job_id: str,
    attempt: int,
    status: JobStatus,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    stage_progress: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
) -> bool:
    """End the job and every task of it still open, in one transaction; False if it moved on."""
    assert status.is_terminal, status
    task_status = TaskStatus.COMPLETED if status is JobStatus.COMPLETED else TaskStatus(status.value)
    with conn.transaction():
        ended = conn.execute(
            """UPDATE rayetl.jobs SET status = %s, result = %s, error = %s, finished_at = now(),
                      updated_at = now(), stage_progress = coalesce(%s, stage_progress)
               WHERE id = %s AND attempt = %s AND status IN ('queued', 'running')""",
            (
                status.value,
                Jsonb(result) if result is not None else None,
                error,
                Jsonb(stage_progress) if stage_progress is not None else None,
                job_id,
                attempt,
            ),
        ).rowcount
        if not ended:
            return False
        # Whatever is still open belongs to this ending job: nothing may stay queued or running.
        conn.execute(
            """UPDATE rayetl.tasks SET status = %s, finished_at = coalesce(finished_at, now()),
                      error = coalesce(error, %s)
               WHERE job_id = %s AND status = ANY(%s)""",
            (
                task_status.value,
                f"job {status.value} before this task finished",
                job_id,
                list(_OPEN_TASK_STATUSES),
            ),
        )
        event_detail = {"error": error} if error else {}
        event_detail.update(detail or {})
        add_events(conn, [JobEvent(job_id, attempt, f"job_{status.value}", detail=event_detail)])
        conn.execute("SELECT pg_notify(%s, %s)", (_JOB_ENDED_CHANNEL, job_id))
    return True


@contextmanager
def job_ends(conn: Connection) -> Iterator[Callable[[float], bool]]:
    """Listen on conn for jobs ending; yields wait(timeout_s): whether one ended before the timeout.

    A job read after entering has its end notified, however soon it comes. conn must be idle (no
    transaction open) and is left idle, no longer listening.
    """
    channel = sql.Identifier(_JOB_ENDED_CHANNEL)
    with conn.transaction():
        conn.execute(sql.SQL("LISTEN {}").format(channel))
    try:
        yield lambda timeout_s: any(True for _ in conn.notifies(timeout=timeout_s, stop_after=1))
    finally:
        with conn.transaction():
            conn.execute(sql.SQL("UNLISTEN {}").format(channel))


def mark_resumed(conn: Connection, job_id: str, attempt: int, *, reason: str) -> bool:
    """Count one more resume of the job by the janitor and log why."""
    with conn.transaction():
        row = conn.execute(
            """UPDATE rayetl.jobs SET resumes = resumes + 1, updated_at = now()
               WHERE id = %s AND attempt = %s AND status IN ('queued', 'running') RETURNING resumes""",
            (job_id, attempt),
        ).fetchone()
        if row is None:
            return False
        add_events(
            conn,
            [
                JobEvent(
                    job_id,
                    attempt,
                    "janitor_resumed",
                    detail={"reason": reason, "resumes": row["resumes"]},
                )
            ],
        )
    return True


def find_stale_jobs(conn: Connection, *, idle_s: float) -> list[JobRecord]:
    """Unfinished jobs that have not moved for idle_s seconds."""
    rows = conn.execute(
        """SELECT * FROM rayetl.jobs WHERE status IN ('queued', 'running')
           AND updated_at < now() - make_interval(secs => %s) ORDER BY updated_at""",
        (idle_s,),
    ).fetchall()
    return [JobRecord.model_validate(r) for r in rows]


# -- tasks -----------------------------------------------------------------------------------


def insert_tasks(conn: Connection, tasks: Sequence[NewTask]) -> None:
    """Write planned tasks as queued (one COPY); a re-planned task starts over in its old row."""
    if not tasks:
        return
    conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS new_tasks
           (id text, job_id text, stage text, stage_index int, seq int, task_key text, task_type text)
           ON COMMIT DELETE ROWS"""
    )
    with conn.cursor().copy(
        "COPY new_tasks (id, job_id, stage, stage_index, seq, task_key, task_type) FROM STDIN"
    ) as copy:
        for t in tasks:
            copy.write_row((t.id, t.job_id, t.stage, t.stage_index, t.seq, t.task_key, t.task_type))
    conn.execute(
        """INSERT INTO rayetl.tasks (id, job_id, stage, stage_index, seq, task_key, task_type, status)
           SELECT id, job_id, stage, stage_index, seq, task_key, task_type, 'queued' FROM new_tasks
           ON CONFLICT (id) DO UPDATE SET status = 'queued', attempt = 0, retryable = NULL,
               error = NULL, result = NULL, output = NULL, node = NULL, worker = NULL,
               started_at = NULL, finished_at = NULL, duration_s = NULL, seq = EXCLUDED.seq"""
    )


def update_tasks(conn: Connection, updates: Iterable[TaskUpdate]) -> int:
    """Apply a batch of task updates in one statement."""
    updates = list(updates)
    if not updates:
        return 0
    columns = list(zip(*(_update_row(u) for u in updates), strict=True))
    return conn.execute(
        """UPDATE rayetl.tasks AS t SET status = u.status, attempt = u.attempt,
                  retryable = u.retryable, error = u.error, result = u.result::jsonb,
                  output = coalesce(u.output::jsonb, t.output), node = coalesce(u.node, t.node),
                  worker = coalesce(u.worker, t.worker),
                  started_at = coalesce(u.started_at, t.started_at),
                  finished_at = u.finished_at, duration_s = u.duration_s
           FROM unnest(%s::text[], %s::text[], %s::int[], %s::bool[], %s::text[], %s::text[],
                       %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],
                       %s::float8[])
                AS u(id, status, attempt, retryable, error, result, output, node, worker,
                     started_at, finished_at, duration_s)
           WHERE t.id = u.id""",
        [list(c) for c in columns],
    ).rowcount


def _update_row(u: TaskUpdate) -> tuple:
    return (
        u.id,
        u.status.value,
        u.attempt,
        u.retryable,
        u.error,
        json.dumps(u.result) if u.result is not None else None,
        json.dumps(u.output) if u.output is not None else None,
        u.node,
        u.worker,
        u.started_at,
        u.finished_at,
        u.duration_s,
    )


def durable_outputs(conn: Connection, job_id: str, stage: str) -> dict[str, Any]:
    """Outputs of the completed tasks of a durable stage, by task key, in plan order."""
    rows = conn.execute(
        """SELECT task_key, output FROM rayetl.tasks
           WHERE job_id = %s AND stage = %s AND status = 'completed' AND output IS NOT NULL
           ORDER BY seq""",
        (job_id, stage),
    ).fetchall()
    return {r["task_key"]: r["output"] for r in rows}


def _task_filters(job_id: str, stage: str | None, status: str | None) -> tuple[sql.Composable, list[Any]]:
    clauses, values = [sql.SQL("job_id = %s")], [job_id]
    if stage:
        clauses.append(sql.SQL("stage = %s"))
        values.append(stage)
    if status:
        clauses.append(sql.SQL("status = %s"))
        values.append(status)
    return sql.SQL(" AND ").join(clauses), values


def list_tasks(
    conn: Connection,
    job_id: str,
    *,
    stage: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[TaskRecord]:
    """Tasks of a job in plan order."""
    where, values = _task_filters(job_id, stage, status)
    query = sql.SQL(
        """SELECT id, job_id, stage, task_key, task_type, status, attempt, retryable, error, result,
                  node, worker, started_at, finished_at, duration_s
           FROM rayetl.tasks WHERE {} ORDER BY stage_index, seq LIMIT %s OFFSET %s"""
    ).format(where)
    return [TaskRecord.model_validate(r) for r in conn.execute(query, [*values, limit, offset])]


def count_tasks(conn: Connection, job_id: str, *, stage: str | None = None, status: str | None = None) -> int:
    """How many tasks match."""
    where, values = _task_filters(job_id, stage, status)
    query = sql.SQL("SELECT count(*) AS n FROM rayetl.tasks WHERE {}").format(where)
    return conn.execute(query, values).fetchone()["n"]


def count_tasks_by_status(conn: Connection, job_id: str) -> dict[str, int]:
    """Task counts of a job by status."""
    rows = conn.execute(
        "SELECT status, count(*) AS n FROM rayetl.tasks WHERE job_id = %s GROUP BY status",
        (job_id,),
    ).fetchall()
    return {r["status"]: r["n"] for r in rows}


# -- events ----------------------------------------------------------------------------------


def add_events(conn: Connection, events: Sequence[JobEvent]) -> None:
    """Append events (one pipelined batch)."""
    if not events:
        return
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO rayetl.job_events (job_id, attempt, event, stage, task_key, detail)
               VALUES (%s, %s, %s, %s, %s, %s)""",
            [(e.job_id, e.attempt, e.event, e.stage, e.task_key, Jsonb(e.detail)) for e in events],
        )


def list_events(conn: Connection, job_id: str, *, limit: int = 500, offset: int = 0) -> list[EventRecord]:
    """Events of a job, oldest first."""
    rows = conn.execute(
        "SELECT * FROM rayetl.job_events WHERE job_id = %s ORDER BY id LIMIT %s OFFSET %s",
        (job_id, limit, offset),
    ).fetchall()
    return [EventRecord.model_validate(r) for r in rows]
