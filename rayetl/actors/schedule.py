"""Scheduling decisions as plain functions and data, testable without Ray."""

import heapq
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rayetl.models import StageProgress
from rayetl.pipelines.contract import Stage

__all__ = ["RetryQueue", "resume_index"]


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
