"""Repeated runs of one tool, reduced to the one that counts: the fastest.

Timings on a shared machine swing by up to ±20% from one run to the next; the fastest run is the
one least disturbed (as timeit does). A run is anything with `seconds` (None when it failed) and
`run_seconds` (filled here with the seconds of every successful run, to print beside the best).
"""

from typing import Protocol, TypeVar

__all__ = ["fastest"]


class _Timed(Protocol):
    seconds: float | None
    run_seconds: list[float]


Run = TypeVar("Run", bound=_Timed)


def fastest(runs: list[Run]) -> Run:
    """The fastest successful run, or the first run when none succeeded."""
    done = [run for run in runs if run.seconds is not None]
    best = min(done, key=lambda run: run.seconds) if done else runs[0]
    best.run_seconds = [run.seconds for run in done]
    return best
