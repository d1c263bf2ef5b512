"""A streaming stage and the stage that consumes it, run together: each item is planned on arrival."""

import logging
import time
from collections.abc import Mapping
from typing import Any

import ray

from rayetl.actors.audit_buffer import AuditBuffer
from rayetl.actors.schedule import check_plan
from rayetl.actors.stage_run import StageRun, resolve_handles
from rayetl.actors.stream_run import Arrival, StreamingStageRun
from rayetl.errors import PermanentError
from rayetl.models import StageProgress
from rayetl.pipelines.contract import JobParams, JobType, StageOutputs, TaskSpec

__all__ = ["StreamedPair"]

logger = logging.getLogger(__name__)

_PRODUCER_WAIT_S = 0.02  # short: the consumer's step does the real waiting


class StreamedPair:
    """Runs stage `index` (streaming) and stage `index + 1` at once.

    Items are taken from the producer only while fewer than `window` consumer tasks are waiting
    or running, so memory is bounded by the window, not by the size of the input.
    """

    def __init__(
        self,
        runner,
        pool,
        buffer: AuditBuffer,
        job_type: JobType,
        index: int,
        params: JobParams,
        outputs: dict[str, StageOutputs],
        progress: dict[str, StageProgress],
    ):
        self._runner, self._pool, self._buffer = runner, pool, buffer
        self._job_type, self._index, self._params = job_type, index, params
        self._outputs, self._progress = outputs, progress
        self.producer_stage, self.consumer_stage = job_type.stages[index], job_type.stages[index + 1]
        self._planned: list[str] = []
        self._started = self._producer_s = None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.window = max(2, 2 * cpus)

    def run(self, specs: list[TaskSpec]) -> bool:
        """Run both stages to the end; False when no item came and the consumer allows that."""
        runner, buffer = self._runner, self._buffer
        producer_progress = self._progress[self.producer_stage.name] = runner.begin_stage(
            self._pool, buffer, self._job_type, self._index, specs
        )
        runner.stage = self.producer_stage.name
        producer = runner.stage_run(
            StreamingStageRun, buffer, self._job_type, self.producer_stage, producer_progress
        )
        consumer_progress = self._progress[self.consumer_stage.name] = StageProgress(status="running")
        consumer = runner.stage_run(StageRun, buffer, self._job_type, self.consumer_stage, consumer_progress)
        producer.add(specs)
        self._started = time.monotonic()
        try:
            self._loop(producer, consumer, consumer_progress)
        except BaseException:
            producer.stop()
            consumer.stop()
            raise
        if not self._planned:
            check_plan(self.consumer_stage, [])  # fails the job unless the stage may be empty
            return False
        runner.stage = self.consumer_stage.name
        runner.end_stage(buffer, self.consumer_stage, consumer_progress)
        # The items' data went to the consumer once; only their summaries stay.
        items = dict.fromkeys(producer.item_summaries)
        self._outputs[self.producer_stage.name] = StageOutputs(
            items, summaries=producer.item_summaries, elapsed_s=self._producer_s
        )
        self._outputs[self.consumer_stage.name] = StageOutputs(
            {key: consumer.handles[key] for key in self._planned},
            summaries=consumer.summaries,
            resolve=resolve_handles,
            elapsed_s=round(time.monotonic() - self._started, 3),
        )
        return True

    def _loop(
        self, producer: StreamingStageRun, consumer: StageRun, consumer_progress: StageProgress
    ) -> None:
        started_consumer = False
        while producer.busy or consumer.busy:
            producer.room = self.window - consumer.backlog
            self._runner.stage = self.producer_stage.name  # the stage a failure is reported in
            producer.step(_PRODUCER_WAIT_S if consumer.busy else 0.1)
            if not producer.busy and producer.progress.status != "completed":
                self._runner.end_stage(self._buffer, self.producer_stage, producer.progress)
                self._producer_s = round(time.monotonic() - self._started, 3)
            arrived = producer.take_arrivals()
            if arrived:
                if not started_consumer:
                    self._start_consumer()
                    started_consumer = True
                self._plan_arrivals(arrived, consumer, consumer_progress)
            if consumer.busy:
                self._runner.stage = self.consumer_stage.name
                consumer.step()

    def _start_consumer(self) -> None:
        buffer = self._buffer
        buffer.event("stage_started", stage=self.consumer_stage.name, streaming_from=self.producer_stage.name)
        buffer.job(current_stage=self.consumer_stage.name, stage_index=self._index + 1)
        buffer.flush()

    def _plan_arrivals(
        self, arrived: Mapping[str, Arrival], consumer: StageRun, consumer_progress: StageProgress
    ) -> None:
        new = StageOutputs(
            {key: a.data_ref for key, a in arrived.items()},
            summaries={key: a.summary for key, a in arrived.items()},
            resolve=resolve_handles,
        )
        view: dict[str, Any] = {**self._outputs, self.producer_stage.name: new}
        self._runner.stage = self.consumer_stage.name
        specs = list(self.consumer_stage.plan(self._params, view))
        taken = set(self._planned)
        repeated = [s.key for s in specs if s.key in taken]
        if repeated or len({s.key for s in specs}) != len(specs):
            raise PermanentError(
                f"stage {self.consumer_stage.name!r} planned duplicate task keys ({repeated[:3]}); "
                "keys must be unique across the streamed items"
            )
        self._runner.add_tasks(
            self._pool, self.consumer_stage, self._index + 1, specs, first_seq=len(self._planned)
        )
        self._planned.extend(s.key for s in specs)
        consumer_progress.total += len(specs)
        self._buffer.progress_changed()
        consumer.add(specs)
