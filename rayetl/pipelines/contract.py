"""The job contract: what every job type declares, checked when it is defined."""

import hashlib
import inspect
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from rayetl.errors import RayetlError
from rayetl.settings import Settings

__all__ = [
    "JobContractError",
    "JobParams",
    "JobType",
    "Stage",
    "StageOutputs",
    "StreamItem",
    "TaskContext",
    "TaskSpec",
    "current_task",
    "task_context",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class JobContractError(RayetlError, TypeError):
    """A job type that does not fulfil the contract; raised at import."""


class JobParams(BaseModel):
    """Base of every params model: unknown fields are rejected and values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class TaskSpec:
    """One task a stage plans: a key unique in its stage and the arguments of its function."""

    key: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskContext:
    """Who a running task is; task functions read it with current_task()."""

    job_id: str
    job_type: str
    stage: str
    key: str
    attempt: int
    job_attempt: int
    settings: Settings


_CURRENT_TASK: ContextVar[TaskContext | None] = ContextVar("rayetl_current_task", default=None)


@contextmanager
def task_context(ctx: TaskContext) -> Iterator[TaskContext]:
    """Make ctx the current task while a task function runs."""
    token = _CURRENT_TASK.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT_TASK.reset(token)


def current_task() -> TaskContext:
    """The context of the task being run; only valid inside a task function."""
    ctx = _CURRENT_TASK.get()
    if ctx is None:
        raise RuntimeError("current_task() called outside a rayetl task")
    return ctx


class StageOutputs:
    """Outputs of a finished stage, by task key in plan order.

    Values are opaque handles (Ray ObjectRefs, or plain values for durable stages): pass them on
    as task arguments as they are, and call values() only when planning needs the data itself.
    summaries are the tasks' small JSON summaries by key, elapsed_s the stage's wall time.
    """

    def __init__(
        self,
        outputs: Mapping[str, Any],
        *,
        summaries: Mapping[str, dict] | None = None,
        resolve: Callable[[list], list] | None = None,
        elapsed_s: float | None = None,
    ):
        self._outputs = dict(outputs)
        self.summaries = dict(summaries or {})
        self.elapsed_s = elapsed_s  # the stage's wall time; None when it ran before a resume
        self._resolve = resolve or (lambda handles: list(handles))

    def __len__(self) -> int:
        return len(self._outputs)

    def keys(self) -> list[str]:
        """Task keys in plan order."""
        return list(self._outputs)

    def handles(self) -> list[Any]:
        """Outputs as handles to pass to the next stage's tasks."""
        return list(self._outputs.values())

    def items(self) -> list[tuple[str, Any]]:
        """(key, handle) pairs in plan order."""
        return list(self._outputs.items())

    def values(self) -> list[Any]:
        """The outputs themselves (fetched from the object store when needed)."""
        return self._resolve(self.handles())


@dataclass(frozen=True)
class StreamItem:
    """One output a streaming stage's task yields: a key unique in its stage, the data, a JSON summary."""

    key: str
    data: Any
    summary: Mapping[str, Any] = field(default_factory=dict)


PlanFn = Callable[[Any, Mapping[str, StageOutputs]], Sequence[TaskSpec]]


@dataclass(frozen=True)
class Stage:
    """A step of a job: plan() turns params and earlier outputs into tasks that run() executes.

    empty_ok: a plan with no tasks ends the job early as a success (e.g. "no files matched");
        otherwise an empty plan fails the job.
    durable: outputs are small JSON values kept in Postgres, so a resumed job need not redo it.
    streams: run is a generator of StreamItem; each item goes to the next stage as soon as it is
        yielded (the next stage's plan is called with outputs[<this stage>] holding just the new
        items), so the two stages overlap and no worker holds all the data. Afterwards only the
        items' summaries remain: their data was handed on once.
    """

    name: str
    plan: PlanFn | None = None
    run: Callable[..., Any] | None = None
    empty_ok: bool = False
    durable: bool = False
    streams: bool = False
    num_cpus: float = 1.0
    description: str = ""


@dataclass(frozen=True)
class JobType:
    """A job type: params model, ordered stages, optional preflight, and finalize.

    cleanup(params, job_id, settings), when given, removes what a failed or cancelled attempt
    left half-done (e.g. a staging table); it runs once the attempt has ended and must be
    idempotent.
    """

    name: str
    params: type[JobParams] | None = None
    stages: tuple[Stage, ...] = ()
    finalize: Callable[[Any, Mapping[str, StageOutputs]], Any] | None = None
    preflight: Callable[[Any, Settings], None] | None = None
    cleanup: Callable[[Any, str, Settings], None] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for problem in _contract_problems(self):
            raise JobContractError(f"job type {self.name!r}: {problem}")

    @property
    def stage_names(self) -> list[str]:
        """Stage names in run order."""
        return [s.name for s in self.stages]

    def parse_params(self, raw: Mapping[str, Any], settings: Settings | None = None) -> JobParams:
        """Validate raw params; the settings fill configured defaults (e.g. the container)."""
        return self.params.model_validate(dict(raw), context={"settings": settings})

    def job_id(self, params: JobParams) -> str:
        """sha256 of the job type and its canonical params (defaults applied)."""
        canonical = json.dumps(
            {"job_type": self.name, "params": params.model_dump(mode="json")},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def _takes_positional(fn: Callable, count: int) -> bool:
    try:
        inspect.signature(fn).bind(*range(count))
    except TypeError:
        return False
    return True


def _contract_problems(job: JobType) -> Iterator[str]:
    if not _NAME.match(job.name):
        yield "the name must be lower-case letters, digits and '_', starting with a letter"
    if not (isinstance(job.params, type) and issubclass(job.params, JobParams)):
        yield "params is missing: set params to a JobParams subclass (pydantic, extra='forbid')"
    elif job.params.model_config.get("extra") != "forbid":
        yield "params must reject unknown fields: keep model_config extra='forbid'"
    if not job.stages:
        yield "stages is missing: declare at least one Stage"
    if not callable(job.finalize):
        yield "finalize is missing: define finalize(params, outputs) that aggregates the results"
    elif not _takes_positional(job.finalize, 2):
        yield "finalize must accept (params, outputs)"
    if job.preflight is not None and not _takes_positional(job.preflight, 2):
        yield "preflight must accept (params, settings)"
    if job.cleanup is not None and not _takes_positional(job.cleanup, 3):
        yield "cleanup must accept (params, job_id, settings)"
    seen = set()
    for index, stage in enumerate(job.stages):
        if not isinstance(stage, Stage):
            yield f"stages must be Stage objects, got {type(stage).__name__}"
            continue
        if not _NAME.match(stage.name):
            yield f"stage name {stage.name!r} must be lower-case letters, digits and '_'"
        if stage.name in seen:
            yield f"stage name {stage.name!r} is used twice"
        seen.add(stage.name)
        if not callable(stage.plan):
            yield f"stage {stage.name!r}: plan is missing: define plan(params, outputs) -> [TaskSpec]"
        elif not _takes_positional(stage.plan, 2):
            yield f"stage {stage.name!r}: plan must accept (params, outputs)"
        if not callable(stage.run):
            yield f"stage {stage.name!r}: run is missing: the task function the stage runs"
        elif (
            not inspect.isfunction(stage.run)
            or "<" in stage.run.__qualname__
            or "." in stage.run.__qualname__
        ):
            # Ray ships the function to workers by reference: it must be importable by name.
            yield f"stage {stage.name!r}: run must be a module-level function"
        if stage.num_cpus < 0:
            yield f"stage {stage.name!r}: num_cpus must be >= 0"
        if stage.streams:
            yield from _streaming_problems(job.stages, index)


def _streaming_problems(stages: tuple[Stage, ...], index: int) -> Iterator[str]:
    stage = stages[index]
    if callable(stage.run) and not inspect.isgeneratorfunction(stage.run):
        yield f"stage {stage.name!r} streams: run must be a generator function yielding StreamItem"
    if stage.durable:
        yield f"stage {stage.name!r} streams: its items live in the object store, so it cannot be durable"
    if index == len(stages) - 1:
        yield f"stage {stage.name!r} streams: a later stage must consume its items"
    elif stages[index + 1].streams:
        yield f"stage {stage.name!r} streams into {stages[index + 1].name!r}, which streams too (unsupported)"
