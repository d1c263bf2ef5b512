"""The coordinator host: one long-lived actor that owns every job's coordinator, and keeps one spare.

Ray ties a task's worker process to the detached actor at the root of its ownership chain and
kills those workers when that actor goes. With a detached coordinator per job, every job started
fresh worker processes (1.5-2 s each of start-up and imports, measured here). Coordinators owned by
this one detached actor share one warm pool of workers instead.

A coordinator is a new process too, and starting one (Python, Ray, every job type's imports) took
1.5-3 s of every job. So the host starts the next job's coordinator ahead of time, while nothing
runs: a spare that has done its imports and waits. A submission hands the spare its job; the next
spare starts once the job has ended (or, if its coordinator died, once no coordinator runs a job),
so that its start-up does not take CPU from a running job. A coordinator still lives for one job
attempt; when it ends it asks the host to let go of it. If the host itself dies, the coordinators it
owns die with it and the janitor resumes their jobs.
"""

import logging
import threading
import time
import uuid
from dataclasses import dataclass

import ray

from rayetl.actors.coordinator import Assignment, JobCoordinator
from rayetl.actors.runtime import HOST_NAME, coordinator_name, ensure_detached
from rayetl.logs import configure_service_logging
from rayetl.settings import Settings

__all__ = ["CoordinatorHost", "coordinator_state", "ensure_host", "find_hosted_coordinator"]

logger = logging.getLogger(__name__)

_PING_TIMEOUT_S = 5
_QUIET_CHECK_S = 2.0


@dataclass
class _Hosted:
    token: str
    handle: ray.actor.ActorHandle


@ray.remote(num_cpus=0, max_concurrency=16)
class CoordinatorHost:
    """Creates coordinators, hands them their jobs and keeps their handles (an actor lives while held)."""

    def __init__(self):
        configure_service_logging()
        self._lock = threading.Lock()
        self._coordinators: dict[str, _Hosted] = {}  # by coordinator name: one per job attempt
        self._assignments: dict[str, Assignment] = {}  # by token: what a restarted coordinator asks
        self._spare: _Hosted | None = self._new_coordinator()  # ready for the first job
        threading.Thread(target=self._keep_a_spare, name="spare-keeper", daemon=True).start()

    def start(self, job_id: str, job_type: str, attempt: int, settings: Settings) -> str:
        """Hand the job attempt to a coordinator unless a live one has it already; returns its name."""
        name = coordinator_name(job_type, job_id, attempt)
        with self._lock:
            current = self._coordinators.get(name)
        if current is not None and self._is_running(current):
            return name
        with self._lock:
            if current is not None:  # if it comes back after all, it finds no job to resume
                self._assignments.pop(current.token, None)
            coordinator, self._spare = self._spare or self._new_coordinator(), None
            assignment = Assignment(name=name, job_id=job_id, settings=settings)
            self._assignments[coordinator.token] = assignment
            self._coordinators[name] = coordinator
        coordinator.handle.adopt.options(name=name).remote(assignment)  # named: see JobCoordinator
        logger.info("job %s: coordinator %s running", job_id[:12], name)
        return name

    def assignment(self, token: str) -> Assignment | None:
        """The job of the coordinator created with `token` (a restarted coordinator asks)."""
        with self._lock:
            return self._assignments.get(token)

    def find(self, name: str) -> ray.actor.ActorHandle | None:
        """The coordinator of a job attempt, if the host holds one."""
        with self._lock:
            hosted = self._coordinators.get(name)
        return hosted and hosted.handle

    def job_ended(self, name: str) -> None:
        """A coordinator's job ended: start the next spare now, while the cluster is quiet."""
        with self._lock:
            if self._spare is None:
                self._spare = self._new_coordinator()

    def release(self, name: str) -> None:
        """Let go of a finished coordinator: Ray ends an actor once no handle to it is left."""
        with self._lock:
            hosted = self._coordinators.pop(name, None)
            if hosted is not None:
                self._assignments.pop(hosted.token, None)

    def count(self) -> int:
        """Coordinators held, the spare not included (for tests and the curious)."""
        return len(self._coordinators)

    def spare(self) -> ray.actor.ActorHandle | None:
        """The coordinator waiting for the next job, if there is one (for tests and the curious)."""
        return self._spare and self._spare.handle

    def _keep_a_spare(self) -> None:
        """Start a spare once no coordinator runs a job, even if the last one died without job_ended;
        let go of coordinators that died for good."""
        while True:
            time.sleep(_QUIET_CHECK_S)
            with self._lock:
                held = dict(self._coordinators)
                if self._spare is not None and not held:
                    continue
            # A coordinator that does not answer may be restarting: it counts as running, and it
            # is not let go (that would end it); the janitor decides about its job.
            states = {
                name: coordinator_state(hosted.handle, timeout_s=_PING_TIMEOUT_S)
                for name, hosted in held.items()
            }
            self._forget_dead(held, states)
            if "running" not in states.values():
                with self._lock:
                    self._spare = self._spare or self._new_coordinator()

    def _forget_dead(self, held: dict[str, _Hosted], states: dict[str, str]) -> None:
        # A coordinator past its restarts never asks to be released: its handle would be held for
        # ever. Only one Ray reports dead for good goes, and only if it is still the one held.
        with self._lock:
            for name, state in states.items():
                if state == "dead" and self._coordinators.get(name) is held[name]:
                    del self._coordinators[name]
                    self._assignments.pop(held[name].token, None)
                    logger.info("coordinator %s died for good: let go of it", name)

    def _new_coordinator(self) -> _Hosted:
        token = uuid.uuid4().hex
        host = ray.get_runtime_context().current_actor
        return _Hosted(token, JobCoordinator.options(max_restarts=2).remote(host, token))

    def _is_running(self, hosted: _Hosted) -> bool:
        """Whether a coordinator still runs its job (restarting or slow to answer counts as running)."""
        return coordinator_state(hosted.handle, timeout_s=_PING_TIMEOUT_S) == "running"


def coordinator_state(coordinator: ray.actor.ActorHandle, *, timeout_s: float) -> str:
    """'running' (or restarting, or slow to answer), 'idle' (no job, or its job ended) or 'dead'.

    Only Ray saying the actor died for good is death: a coordinator being restarted or busy on a
    loaded node answers late or not at all, and is looked at again later.
    """
    try:
        running = ray.get(coordinator.ping.remote(), timeout=timeout_s)["running"]
    except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
        logger.info("coordinator unavailable or silent for %ss; looking again later", timeout_s)
        return "running"
    except ray.exceptions.RayActorError:
        return "dead"
    return "running" if running else "idle"


def ensure_host(settings: Settings):
    """The cluster's coordinator host, started if it is not running yet."""
    return ensure_detached(CoordinatorHost, HOST_NAME, settings)


def find_hosted_coordinator(name: str, settings: Settings, *, timeout_s: float):
    """The coordinator the host holds under `name`, or None (no host, or no such coordinator)."""
    try:
        host = ray.get_actor(HOST_NAME, namespace=settings.ray_namespace)
        return ray.get(host.find.remote(name), timeout=timeout_s)
    except (ValueError, ray.exceptions.RayActorError):
        return None
