"""The audit store against a real PostgreSQL: jobs, batched task writes, the append-only log."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from pydantic import SecretStr

from rayetl.models import JobStatus, TaskStatus
from rayetl.store import audit
from rayetl.store.audit import NewTask, TaskUpdate
from rayetl.store.migrate import available_migrations, upgrade


@pytest.fixture
def job_id() -> str:
    return uuid.uuid4().hex * 2


def _insert(pool, job_id):
    with pool.connection() as conn:
        return audit.insert_job(conn, job_id=job_id, job_type="hello_world", params={"n": 1}, total_stages=2)


def _tasks(job_id: str, count: int) -> list[NewTask]:
    return [NewTask(f"{job_id[:8]}-{i}", job_id, "greet", 0, i, f"greet-{i}", "greet") for i in range(count)]


def test_concurrent_inserts_of_one_job_create_it_once(pool, job_id):
    with ThreadPoolExecutor(8) as executor:
        outcomes = list(executor.map(lambda _: _insert(pool, job_id), range(16)))
    assert sum(created for _, created in outcomes) == 1
    assert {job.id for job, _ in outcomes} == {job_id}
    with pool.connection() as conn:
        assert [e.event for e in audit.list_events(conn, job_id)] == ["submitted"]


def test_restart_only_takes_failed_or_cancelled_jobs(pool, job_id):
    job, _ = _insert(pool, job_id)
    with pool.connection() as conn:
        assert audit.restart_job(conn, job_id, from_scratch=True, event="resubmitted") is None
        assert audit.finish_job(conn, job_id, 1, JobStatus.FAILED, error="boom")
        restarted = audit.restart_job(conn, job_id, from_scratch=True, event="resubmitted")
        assert restarted.attempt == 2 and restarted.status is JobStatus.QUEUED and restarted.error is None
        # A second restart of the same failure loses the race: the job is queued again.
        assert audit.restart_job(conn, job_id, from_scratch=True, event="resubmitted") is None


def test_batched_task_updates_keep_the_latest_state(pool, job_id):
    _insert(pool, job_id)
    tasks = _tasks(job_id, 2000)
    with pool.connection() as conn, conn.transaction():
        audit.insert_tasks(conn, tasks)
    updates = [
        TaskUpdate(t.id, TaskStatus.COMPLETED, 1, result={"value": i}, output=f"out {i}", duration_s=0.01)
        for i, t in enumerate(tasks)
    ]
    with pool.connection() as conn:
        assert audit.update_tasks(conn, updates) == 2000
        assert audit.count_tasks_by_status(conn, job_id) == {"completed": 2000}
        outputs = audit.durable_outputs(conn, job_id, "greet")
        page = audit.list_tasks(conn, job_id, limit=10, offset=1990)
    assert len(outputs) == 2000 and outputs["greet-7"] == "out 7"
    assert [t.task_key for t in page] == [f"greet-{i}" for i in range(1990, 2000)]
    assert page[0].result == {"value": 1990}


def test_finishing_a_job_closes_every_open_task(pool, job_id):
    _insert(pool, job_id)
    tasks = _tasks(job_id, 5)
    with pool.connection() as conn:
        with conn.transaction():
            audit.insert_tasks(conn, tasks)
        audit.update_tasks(conn, [TaskUpdate(tasks[0].id, TaskStatus.COMPLETED, 1)])
        audit.update_tasks(conn, [TaskUpdate(tasks[1].id, TaskStatus.RUNNING, 1)])
        assert audit.finish_job(conn, job_id, 1, JobStatus.CANCELLED, error="cancelled by request")
        assert audit.count_tasks_by_status(conn, job_id) == {"completed": 1, "cancelled": 4}
        # A finished job cannot be finished again, nor updated by a stale coordinator.
        assert not audit.finish_job(conn, job_id, 1, JobStatus.FAILED, error="late")
        assert not audit.update_job(conn, job_id, 1, current_stage="greet")


def test_event_log_refuses_edits(pool, job_id):
    _insert(pool, job_id)
    with pool.connection() as conn, pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("UPDATE rayetl.job_events SET event = 'rewritten' WHERE job_id = %s", (job_id,))


def test_stale_jobs_are_found_by_idle_time(pool, job_id):
    _insert(pool, job_id)
    with pool.connection() as conn:
        conn.execute("UPDATE rayetl.jobs SET updated_at = now() - interval '1 hour' WHERE id = %s", (job_id,))
        assert job_id in {j.id for j in audit.find_stale_jobs(conn, idle_s=60)}
        assert job_id not in {j.id for j in audit.find_stale_jobs(conn, idle_s=7200)}


def test_migrations_create_a_fresh_database_and_are_idempotent(settings, database):
    name = f"rayetl_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    fresh = settings.model_copy(update={"database_url": SecretStr(database.dsn_for(name))})
    first = upgrade(fresh)
    second = upgrade(fresh)
    assert first["applied"] == [f"{m.version:04d}_{m.name}" for m in available_migrations()]
    assert second["applied"] == []
    assert first["pgstac_version"] == second["pgstac_version"]
    with psycopg.connect(database.dsn_for(name)) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'rayetl'")}
        pgstac = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgstac'").fetchone()[0]
    assert {"jobs", "tasks", "job_events", "schema_migrations"} <= tables
    assert pgstac == 1
