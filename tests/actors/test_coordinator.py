"""The coordinator never leaves a job hanging: killed mid-job it resumes, by itself or via the janitor."""

import ray
from conftest import wait_until

from rayetl.actors.host import find_hosted_coordinator
from rayetl.actors.janitor import JANITOR_NAME
from rayetl.actors.runtime import coordinator_name
from rayetl.store import audit


def _events(pool, job_id) -> list:
    with pool.connection() as conn:
        return audit.list_events(conn, job_id)


def _start_and_reach_reply_stage(api, pool, params) -> str:
    job_id = api.post("/api/jobs/hello_world", json=params).json()["job_id"]

    def replying():
        with pool.connection() as conn:
            job = audit.get_job(conn, job_id)
        return job.current_stage == "reply" and job.stage_progress["reply"].completed >= 2

    wait_until(replying, timeout_s=90, what="the reply stage to be under way")
    return job_id


def _coordinator(settings, job_id, attempt=1):
    name = coordinator_name("hello_world", job_id, attempt)
    return find_hosted_coordinator(name, settings, timeout_s=10)


def test_killed_coordinator_is_resumed_by_the_janitor_without_redoing_durable_stages(
    api, pool, settings, wait_for_job, unique
):
    params = {"n": 16, "message": unique, "sleep_s": 0.3}
    job_id = _start_and_reach_reply_stage(api, pool, params)
    ray.kill(_coordinator(settings, job_id))  # no restart: only the janitor can save the job now

    job = wait_for_job(job_id, timeout_s=90)
    assert job.status == "completed", job.error
    assert job.result["matched"] == 16
    assert job.resumes == 1
    events = _events(pool, job_id)
    names = [e.event for e in events]
    assert "janitor_resumed" in names and "job_resumed" in names
    resumed = next(e for e in events if e.event == "job_resumed")
    assert resumed.detail == {"from_stage": "reply"}
    greet_restarts = [e for e in events if e.event == "stage_started" and e.stage == "greet"]
    assert len(greet_restarts) == 1  # the durable greetings were not redone
    with pool.connection() as conn:
        assert audit.count_tasks_by_status(conn, job_id) == {"completed": 32}


def test_coordinator_that_crashes_restarts_and_resumes_by_itself(api, pool, settings, wait_for_job, unique):
    params = {"n": 12, "message": unique, "sleep_s": 0.3}
    job_id = _start_and_reach_reply_stage(api, pool, params)
    ray.kill(_coordinator(settings, job_id), no_restart=False)  # as if its process died

    job = wait_for_job(job_id, timeout_s=90)
    assert job.status == "completed", job.error
    names = [e.event for e in _events(pool, job_id)]
    assert names.count("job_resumed") == 1 and "janitor_resumed" not in names


def test_janitor_leaves_slow_jobs_with_a_live_coordinator_alone(api, pool, settings, wait_for_job, unique):
    # Each task outlives janitor_stale_after_s, so the job looks idle; the coordinator answers, though.
    params = {"n": 2, "message": unique, "sleep_s": settings.janitor_stale_after_s + 2}
    job_id = api.post("/api/jobs/hello_world", json=params).json()["job_id"]
    janitor = ray.get_actor(JANITOR_NAME, namespace=settings.ray_namespace)

    def seen_as_alive():
        return any(d.job_id == job_id and d.action == "alive" for d in ray.get(janitor.sweep.remote()))

    wait_until(seen_as_alive, timeout_s=30, what="the janitor to look at the idle job")
    job = wait_for_job(job_id, timeout_s=60)
    assert job.status == "completed" and job.resumes == 0
    assert "janitor_resumed" not in [e.event for e in _events(pool, job_id)]


def test_janitor_fails_a_job_whose_coordinator_keeps_dying(api, pool, settings, wait_for_job, unique):
    params = {"n": 10, "message": unique, "sleep_s": 0.5}
    job_id = _start_and_reach_reply_stage(api, pool, params)
    with pool.connection() as conn:  # as if it had been resumed too often already
        conn.execute(
            "UPDATE rayetl.jobs SET resumes = %s WHERE id = %s", (settings.janitor_max_resumes, job_id)
        )
    ray.kill(_coordinator(settings, job_id))

    job = wait_for_job(job_id, timeout_s=60)
    assert job.status == "failed"
    assert "coordinator lost" in job.error and f"/api/jobs/{job_id}/retry" in job.error
    with pool.connection() as conn:
        counts = audit.count_tasks_by_status(conn, job_id)
    assert counts.get("queued", 0) == 0 and counts.get("running", 0) == 0
