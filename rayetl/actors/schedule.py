"""Scheduling decisions as plain functions and data, testable without Ray."""

import heapq
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rayetl.errors import PermanentError
from rayetl.models import StageProgress
from rayetl.pipelines.contract import Stage, TaskSpec

__all__ = ["RetryQueue", "check_plan", "resume_index"]


def resume_index(stages: Sequence[Stage], progress: Mapping[str, StageProgress]) -> int:
    """The stage a (re)started coordinator runs first.

    It is the first stage not completed, moved back past every stage whose inputs were lost:
    a stage's inputs are the outputs of the stage before it, which survive a coordinator's death
    only if that stage is durable (kept in Postgres). len(stages) means only finalize is left.
    """
    index = next(
        (
            i
            for i, stage in enumerate(stages)
            if progress.get(stage.name, StageProgress()).status != "completed"
        ),
        len(stages),
    )
    while index > 0 and not stages[index - 1].durable:
        index -= 1
    return index


def check_plan(stage: Stage, specs: list[TaskSpec]) -> list[TaskSpec]:
    """The plan, if it can run: unique keys, and no tasks only where the stage allows it.

    An empty plan of an empty_ok stage is returned as is: the job then ends early as a success.
    """
    keys = [spec.key for spec in specs]
    if len(set(keys)) != len(keys):
        raise PermanentError(f"stage {stage.name!r} planned duplicate task keys; keys must be unique")
    if not specs and not stage.empty_ok:
        raise PermanentError(
            f"stage {stage.name!r} planned no tasks, so the job would produce nothing; "
            "check the parameters (e.g. the prefix, filters or input file)"
        )
    return specs


class RetryQueue:
    """Tasks waiting for their backoff to pass, soonest first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._counter = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: Any, delay_s: float) -> None:
        """Hold item for delay_s seconds."""
        self._counter += 1
        heapq.heappush(self._heap, (time.monotonic() + delay_s, self._counter, item))

    def pop_due(self) -> list[Any]:
        """Every item whose delay has passed."""
        now, due = time.monotonic(), []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[2])
        return due

    def seconds_to_next(self) -> float | None:
        """How long until the next item is due; None when empty."""
        return max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else None
