"""The coordinator host: one long-lived actor that owns every job's coordinator.

Ray ties a task's worker process to the detached actor at the root of its ownership chain and
kills those workers when that actor goes. With a detached coordinator per job, every job started
fresh worker processes (1.5-2 s each of start-up and imports, measured here). Coordinators owned by
this one detached actor share one warm pool of workers instead. A coordinator still lives for one
job attempt; when it ends it asks the host to let go of it. If the host itself dies, the
coordinators it owns die with it and the janitor resumes their jobs.
"""

import logging

import ray

from rayetl.actors.coordinator import JobCoordinator
from rayetl.actors.runtime import HOST_NAME, coordinator_name
from rayetl.logs import configure_service_logging
from rayetl.settings import Settings

__all__ = ["CoordinatorHost", "ensure_host"]

logger = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_concurrency=16)
class CoordinatorHost:
    """Creates coordinators and keeps their handles (a non-detached actor lives while one is held)."""

    def __init__(self):
        configure_service_logging()
        self._coordinators: dict[str, ray.actor.ActorHandle] = {}

    def start(self, job_id: str, job_type: str, attempt: int, settings: Settings) -> str:
        """Create the coordinator of a job attempt unless it runs already; returns its name."""
        name = coordinator_name(job_type, job_id, attempt)
        # get_if_exists: the live coordinator if there is one, a new one if it died (a resume).
        self._coordinators[name] = JobCoordinator.options(
            name=name, namespace=settings.ray_namespace, get_if_exists=True, max_restarts=2
        ).remote(job_id, settings)
        logger.info("job %s: coordinator %s running", job_id[:12], name)
        return name

    def release(self, name: str) -> None:
        """Let go of a finished coordinator: Ray ends an actor once no handle to it is left."""
        self._coordinators.pop(name, None)

    def count(self) -> int:
        """Coordinators held (for tests and the curious)."""
        return len(self._coordinators)


def ensure_host(settings: Settings):
    """The cluster's coordinator host, started if it is not running yet."""
    return CoordinatorHost.options(
        name=HOST_NAME,
        namespace=settings.ray_namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
    ).remote()
