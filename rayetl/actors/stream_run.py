"""A streaming stage's tasks in flight: generators whose items are taken as they are yielded."""

from dataclasses import dataclass
from typing import Any

import ray

from rayetl.actors.runtime import task_name
from rayetl.actors.stage_run import StageRun, _Launched
from rayetl.actors.tasks import execute_stream_task
from rayetl.models import TaskStatus
from rayetl.pipelines.contract import TaskSpec

__all__ = ["Arrival", "StreamingStageRun"]


@dataclass(frozen=True)
class Arrival:
    """An item a streaming task yielded: its data stays in the object store, owned by the coordinator."""

    data_ref: Any
    summary: dict[str, Any]


class StreamingStageRun(StageRun):
    """Runs generator tasks and collects their items, at most `room` at a time (back-pressure).

    Items are taken from a generator only while the next stage has room for them, so a fast reader
    waits for its consumers instead of filling the object store. A retried task yields its items
    again; those already taken are dropped, as their keys are deterministic.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.room = 1
        self.item_summaries: dict[str, dict[str, Any]] = {}
        self._arrived: dict[str, Arrival] = {}

    def take_arrivals(self) -> dict[str, Arrival]:
        """Items that arrived since the last call, in arrival order."""
        arrived, self._arrived = self._arrived, {}
        return arrived

    def _launch(self, spec: TaskSpec, attempt: int) -> None:
        generator = execute_stream_task.options(
            name=task_name(self.job_type, self.stage.name, spec.key), num_cpus=self.stage.num_cpus
        ).remote(self.stage.run, self._context(spec.key, attempt), *spec.args, **spec.kwargs)
        self._in_flight[generator] = _Launched(spec, attempt, generator)
        self._record(spec.key, TaskStatus.RUNNING, attempt, started_at=self._now())

    def _collect(self, wait_s: float) -> None:
        if self.room <= 0:
            return  # the next stage is full; its step does the waiting
        ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=wait_s)
        for generator in ready:
            launched = self._in_flight[generator]
            try:
                self._drain(generator, launched)
            except Exception as exc:
                del self._in_flight[generator]
                ray.cancel(generator, force=False)
                self._fail_or_retry(launched, exc)

    def _drain(self, generator, launched: _Launched) -> None:
        """Take the generator's ready items while there is room; settle it at its final report."""
        while self.room > 0 and generator.next_ready():
            meta = ray.get(next(generator))
            if "report" in meta:
                del self._in_flight[generator]
                self.summaries[launched.spec.key] = meta["report"]["summary"]
                self._record_completed(launched, meta["report"])
                return
            data_ref = next(generator)  # yielded right after its meta
            key = meta["item"]
            if key in self.item_summaries:
                continue  # a retried task yields again what was taken before
            self.item_summaries[key] = meta["summary"]
            self._arrived[key] = Arrival(data_ref, meta["summary"])
            self.room -= 1
