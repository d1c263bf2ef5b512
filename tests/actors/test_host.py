"""The coordinator host starts each job's coordinator ahead of the job, and lets it go afterwards."""

import ray
from conftest import wait_until

from rayetl.actors.coordinator import JobCoordinator
from rayetl.actors.host import coordinator_state, ensure_host, find_hosted_coordinator
from rayetl.actors.runtime import coordinator_name


def _actor_id(handle) -> str:
    return ray.get(handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_actor_id()))


def _submit_hello_world(api, pool, unique: str, *, sleep_s: float) -> tuple[str, str]:
    """A hello_world job of two slow tasks, through the API: its id and its coordinator's name."""
    job_id = api.post("/api/jobs/hello_world", json={"n": 2, "message": unique, "sleep_s": sleep_s}).json()[
        "job_id"
    ]
    with pool.connection() as conn:
        attempt = conn.execute("SELECT attempt FROM rayetl.jobs WHERE id = %s", (job_id,)).fetchone()[
            "attempt"
        ]
    return job_id, coordinator_name("hello_world", job_id, attempt)


def test_a_job_runs_on_the_spare_coordinator_started_before_it(api, pool, settings, wait_for_job, unique):
    host = ensure_host(settings)
    wait_until(lambda: ray.get(host.spare.remote()) is not None, timeout_s=30, what="a spare coordinator")
    spare_id = _actor_id(ray.get(host.spare.remote()))

    job_id, name = _submit_hello_world(api, pool, unique, sleep_s=1)
    coordinator = find_hosted_coordinator(name, settings, timeout_s=10)
    assert coordinator is not None and _actor_id(coordinator) == spare_id

    assert wait_for_job(job_id, timeout_s=60).status == "completed"
    # Once the job has ended, a new spare waits for the next job and the finished one is let go.
    wait_until(
        lambda: (
            ray.get(host.spare.remote()) is not None
            and find_hosted_coordinator(name, settings, timeout_s=10) is None
        ),
        timeout_s=30,
        what="a new spare, and the finished coordinator released",
    )
    assert _actor_id(ray.get(host.spare.remote())) != spare_id


def test_the_host_lets_go_of_a_coordinator_that_died_for_good(api, pool, settings, wait_for_job, unique):
    job_id, name = _submit_hello_world(api, pool, unique, sleep_s=20)
    coordinator = find_hosted_coordinator(name, settings, timeout_s=10)
    assert coordinator is not None

    ray.kill(coordinator, no_restart=True)  # past its restarts: it never asks to be released
    cancelled = api.post(f"/api/jobs/{job_id}/cancel").json()  # and the janitor leaves the job alone
    assert cancelled["status"] == "cancelled"

    wait_until(
        lambda: find_hosted_coordinator(name, settings, timeout_s=10) is None,
        timeout_s=30,
        what="the host to let go of the dead coordinator",
    )


def test_a_coordinator_handed_a_job_counts_as_running_before_its_adopt_runs(settings):
    # The janitor asked such a coordinator, found it "idle", took it for gone and resumed its job
    # beside it: the two attempts then raced to publish the same table.
    host = ensure_host(settings)
    coordinator = JobCoordinator.remote(host, "a-token-no-assignment-has")
    try:
        assert coordinator_state(coordinator, timeout_s=60) == "running"
    finally:
        ray.kill(coordinator, no_restart=True)
