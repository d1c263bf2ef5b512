"""Scheduling and retry decisions, as plain functions (no Ray cluster needed)."""

import time

import psycopg
import pytest
import ray.exceptions

from rayetl.actors.retry import backoff_s, classify, describe
from rayetl.actors.schedule import RetryQueue, check_plan, resume_index
from rayetl.errors import Conflict, NotFound, PermanentError, TransientError
from rayetl.models import StageProgress
from rayetl.pipelines.contract import Stage, TaskSpec


def _stages(*durable: bool) -> tuple[Stage, ...]:
    return tuple(Stage(f"s{i}", durable=d) for i, d in enumerate(durable))


def _progress(*statuses: str) -> dict[str, StageProgress]:
    return {f"s{i}": StageProgress(status=s) for i, s in enumerate(statuses)}


@pytest.mark.parametrize(
    ("durable", "statuses", "expected"),
    [
        ((False, False), ("pending", "pending"), 0),
        ((True, False), ("completed", "running"), 1),  # durable outputs survive: resume at s1
        ((False, False), ("completed", "running"), 0),  # s0's outputs died with the coordinator
        ((True, True, False), ("completed", "completed", "running"), 2),
        ((True, False, False), ("completed", "completed", "running"), 1),
        ((True, True), ("completed", "completed"), 2),  # only finalize is left
        ((True, False), ("completed", "completed"), 1),  # finalize needs s1's lost outputs
    ],
)
def test_resume_index_restarts_from_the_last_durable_point(durable, statuses, expected):
    assert resume_index(_stages(*durable), _progress(*statuses)) == expected


def test_retry_queue_releases_items_after_their_delay():
    queue = RetryQueue()
    queue.push("late", 0.2)
    queue.push("soon", 0.0)
    assert queue.pop_due() == ["soon"]
    assert 0 < queue.seconds_to_next() <= 0.2
    time.sleep(0.21)
    assert queue.pop_due() == ["late"]
    assert len(queue) == 0 and queue.seconds_to_next() is None


@pytest.mark.parametrize(
    ("exc", "attempt", "retry", "kind"),
    [
        (TransientError("throttled"), 1, True, "transient"),
        (TransientError("throttled"), 4, False, "transient"),  # out of attempts
        (ConnectionResetError("reset"), 2, True, "transient"),
        (psycopg.OperationalError("server closed the connection"), 1, True, "transient"),
        (ray.exceptions.WorkerCrashedError(), 1, True, "transient"),
        (PermanentError("bad row"), 1, False, "permanent"),
        (FileNotFoundError("x.tif"), 1, False, "permanent"),
        (Conflict("table geo.roads already exists"), 1, False, "permanent"),
        (NotFound("container 'bronze' has no file 'x.tif'"), 1, False, "permanent"),
        (ValueError("surprise"), 1, True, "unknown"),  # unknown: one retry ...
        (ValueError("surprise"), 2, False, "unknown"),  # ... then permanent
    ],
)
def test_errors_are_classified_by_type(exc, attempt, retry, kind):
    verdict = classify(exc, attempt, max_attempts=4)
    assert (verdict.retry, verdict.kind) == (retry, kind)


def test_describe_keeps_the_task_message_without_traceback():
    assert (
        describe(PermanentError("roads.csv: column 'lat' not found")) == "roads.csv: column 'lat' not found"
    )
    assert describe(KeyError("lat")) == "KeyError: 'lat'"


def test_backoff_grows_exponentially_up_to_the_cap():
    delays = [backoff_s(a, base_s=1.0, max_s=5.0) for a in (1, 2, 3, 4, 5)]
    assert 0.8 <= delays[0] <= 1.0 and 1.6 <= delays[1] <= 2.0 and 3.2 <= delays[2] <= 4.0
    assert all(d <= 5.0 for d in delays)


def test_an_empty_plan_fails_the_job_unless_the_stage_allows_it():
    with pytest.raises(
        PermanentError, match="stage 'load' planned no tasks, so the job would produce nothing"
    ):
        check_plan(Stage("load"), [])
    assert check_plan(Stage("load", empty_ok=True), []) == []


def test_a_plan_with_duplicate_keys_is_refused():
    with pytest.raises(PermanentError, match="duplicate task keys"):
        check_plan(Stage("load"), [TaskSpec("a"), TaskSpec("a")])
