"""Orchestration benchmark: hello_world with n=500 and n=5,000 (1,000 and 10,000 tasks).

Wall time from submission to a completed job, tasks per second and audit rows written, on a
private PostGIS and a fresh local Ray cluster. Targets on a 2-core machine: 1,000 tasks <= 3 s,
10,000 tasks <= 20 s, with every task recorded.

    .venv/bin/python benchmarks/orchestration.py [--sizes 500 5000]
"""

import argparse
import os
import time

from private_stack import private_stack, settle

from rayetl.actors import submission
from rayetl.store import audit

TARGET_S = {1_000: 3.0, 10_000: 20.0}


def audit_rows(pool, job_id: str) -> tuple[int, int]:
    with pool.connection() as conn:
        tasks = conn.execute(
            "SELECT count(*) AS n FROM rayetl.tasks WHERE job_id = %s", (job_id,)
        ).fetchone()["n"]
        events = conn.execute(
            "SELECT count(*) AS n FROM rayetl.job_events WHERE job_id = %s", (job_id,)
        ).fetchone()["n"]
    return tasks, events


def run(sizes: list[int]) -> None:
    with private_stack() as (settings, pool):
        # Warm up: worker processes start on first use, which is not what we measure.
        warm = submission.submit_job(
            "hello_world", {"n": 20, "message": "warm-up"}, settings=settings, pool=pool
        )
        submission.wait_for_job(warm.job.id, pool=pool, timeout_s=120)

        header = (
            ("n", 6),
            ("tasks", 7),
            ("wall s", 8),
            ("tasks/s", 9),
            ("task rows", 10),
            ("events", 7),
            ("target s", 9),
        )
        print(" ".join(f"{name:>{width}}" for name, width in header))
        for n in sizes:
            params = {"n": n, "message": f"bench {time.time_ns()}"}
            settle(settings)
            started = time.perf_counter()
            done = submission.submit_job("hello_world", params, settings=settings, pool=pool)
            job = submission.wait_for_job(done.job.id, pool=pool, timeout_s=600)
            wall = time.perf_counter() - started
            assert job.status == "completed", job.error
            tasks, events = audit_rows(pool, job.id)
            with pool.connection() as conn:
                recorded = audit.count_tasks_by_status(conn, job.id)
            assert recorded == {"completed": 2 * n}, recorded
            target = TARGET_S.get(2 * n)
            print(
                f"{n:>6} {2 * n:>7} {wall:>8.2f} {2 * n / wall:>9.0f} {tasks:>10} {events:>7} "
                f"{target if target else '':>9}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    run(parser.parse_args().sizes)
