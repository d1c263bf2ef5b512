"""Joining a Ray cluster, and the names rayetl's actors and tasks carry in the dashboard."""

import logging
import os
from pathlib import Path

import ray

from rayetl.settings import Settings

__all__ = [
    "HOST_NAME",
    "JANITOR_NAME",
    "connect_ray",
    "coordinator_name",
    "ensure_detached",
    "local_ray_address",
    "task_name",
    "worker_pool_env",
]

logger = logging.getLogger(__name__)

JANITOR_NAME = "rayetl-janitor"
HOST_NAME = "rayetl-coordinators"


def coordinator_name(job_type: str, job_id: str, attempt: int) -> str:
    """The coordinator's actor name: readable in the dashboard, unique per job attempt."""
    return f"rayetl-job-{job_type}-{job_id[:12]}-a{attempt}"


def task_name(job_type: str, stage: str, key: str) -> str:
    """A task's name in the dashboard: <job_type>:<stage>:<key>."""
    return f"{job_type}:{stage}:{key}"


def ensure_detached(actor_class, name: str, settings: Settings, *args):
    """The cluster's one named, detached, always-restarted `actor_class`, created if it is missing."""
    return actor_class.options(
        name=name,
        namespace=settings.ray_namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
    ).remote(*args)


def worker_pool_env(cpus: int | None = None) -> dict[str, str]:
    """Ray settings (environment, read when a node starts) that keep enough warm workers.

    Ray keeps idle workers up to one per CPU and kills the rest after a second. rayetl's tasks take
    half a CPU (uploads, tiles) or none (publish, catalog), so a job runs up to ~2 per CPU at once,
    and every job started the extra worker processes again: 2-3 s of start-up and imports each,
    measured here, before its tasks could run.
    """
    cpus = cpus or os.cpu_count() or 1
    return {"RAY_num_workers_soft_limit": str(2 * cpus + 2)}


def local_ray_address(settings: Settings) -> Path:
    """File where `rayetl up` writes the address of the Ray head it started."""
    return settings.home.absolute() / "ray-address"


def connect_ray(settings: Settings) -> None:
    """Join the configured cluster, the one `rayetl up` started, or start a private one."""
    if ray.is_initialized():
        return
    address = settings.ray_address
    if address is None and local_ray_address(settings).exists():
        address = local_ray_address(settings).read_text().strip()
    if address is None and "RAY_ADDRESS" not in os.environ:
        # A private cluster for this process only: no token auth, nobody else can reach it.
        # "local" also keeps ray.init from joining whatever cluster /tmp/ray last recorded.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        for name, value in worker_pool_env().items():
            os.environ.setdefault(name, value)
        address = "local"
    logger.info("joining Ray at %s", address or "a new local cluster")
    ray.init(
        address=address,
        namespace=settings.ray_namespace,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
