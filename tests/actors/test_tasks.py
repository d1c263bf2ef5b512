"""How tasks run on workers: the warm-up of the worker pool."""

import time

import ray

from rayetl.actors.tasks import warm_worker_pool
from rayetl.pipelines import JOB_TYPES


@ray.remote(num_cpus=1, max_retries=0)
def _hold_a_cpu(seconds: float) -> None:
    time.sleep(seconds)


def test_the_worker_pool_warms_up_with_every_job_type_while_every_cpu_is_busy(ray_cluster):
    cpus = int(ray.cluster_resources()["CPU"])
    busy = [_hold_a_cpu.remote(60) for _ in range(cpus)]  # a running job holding the whole cluster
    try:
        warm_ups = warm_worker_pool()
        assert len(warm_ups) == 2 * cpus  # a worker for each task a job runs at once (half a CPU each)
        done, _ = ray.wait(warm_ups, num_returns=len(warm_ups), timeout=45)
        assert len(done) == len(warm_ups), "the warm-up waited for CPUs: it must take none"
        assert ray.get(done) == [sorted(JOB_TYPES)] * len(done)
        assert ray.wait(busy, num_returns=cpus, timeout=0)[0] == []  # and it held nothing back meanwhile
    finally:
        for ref in busy:
            ray.cancel(ref, force=True)
