"""Waiting for a job: the waiter learns of its end when it commits, not at its next look."""

import time

import pytest

from rayetl.actors import submission
from rayetl.errors import NotFound
from rayetl.store.db import open_pool


def test_a_waiter_is_woken_by_the_jobs_end_not_by_its_next_look(ray_cluster, settings, pool, unique):
    submitted = submission.submit_job(
        "hello_world", {"n": 2, "message": unique, "sleep_s": 1}, settings=settings, pool=pool
    )
    assert not submitted.job.status.is_terminal
    started = time.monotonic()
    job = submission.wait_for_job(submitted.job.id, pool=pool, timeout_s=60, recheck_s=30)

    assert job.status == "completed"
    assert time.monotonic() - started < 15  # it would be 30 s if only the re-read saw the end


def test_waiting_gives_up_after_its_timeout_and_leaves_its_connection_as_it_found_it(
    ray_cluster, settings, pool, unique
):
    submitted = submission.submit_job(
        "hello_world", {"n": 1, "message": unique, "sleep_s": 5}, settings=settings, pool=pool
    )
    with open_pool(settings, min_size=1, max_size=1) as one_connection:
        with pytest.raises(TimeoutError, match=r"still (queued|running) after"):
            submission.wait_for_job(submitted.job.id, pool=one_connection, timeout_s=0.5, recheck_s=0.2)
        with one_connection.connection() as conn:
            assert conn.execute("SELECT pg_listening_channels() AS channel").fetchall() == []
        job = submission.wait_for_job(submitted.job.id, pool=one_connection, timeout_s=60)
    assert job.status == "completed"


def test_waiting_for_an_unknown_job_is_not_found(pool):
    with pytest.raises(NotFound, match="no job with id"):
        submission.wait_for_job("0" * 64, pool=pool, timeout_s=5)
