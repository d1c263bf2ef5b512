"""hello_world: n greetings, then n replies that each consume their greeting.

It exercises the whole engine. Test-only parameters make chosen tasks fail on purpose, so
retries and failures can be checked end to end:
  fail_transient   task keys ("greet-3", "reply-7") that fail transiently on their first
                   `transient_failures` attempts, then succeed;
  fail_permanent   task keys that fail permanently in the job's first attempt (the job fails;
                   a retry of the job, its second attempt, then succeeds);
  sleep_s          seconds each task sleeps, to make a job slow enough to cancel or kill.
"""

import re
import time
from collections.abc import Mapping

from pydantic import BaseModel, Field, model_validator

from rayetl.errors import PermanentError, TransientError
from rayetl.pipelines.contract import (
    JobParams,
    JobType,
    Stage,
    StageOutputs,
    TaskSpec,
    current_task,
)

__all__ = ["HELLO_WORLD", "HelloWorldParams", "HelloWorldResult"]

_TASK_KEY = re.compile(r"^(greet|reply)-(\d+)$")


class HelloWorldParams(JobParams):
    """Parameters of hello_world."""

    n: int = Field(3, ge=1, le=100_000, description="Number of greetings (and of replies).")
    message: str = Field("hello", min_length=1, max_length=1000, description="Text of each greeting.")
    fail_transient: list[str] = Field(
        default_factory=list, description="Test only: task keys that fail transiently first."
    )
    transient_failures: int = Field(
        1,
        ge=1,
        le=10,
        description="Test only: how many first attempts of fail_transient tasks fail.",
    )
    fail_permanent: list[str] = Field(
        default_factory=list,
        description="Test only: task keys that fail permanently in the first job attempt.",
    )
    sleep_s: float = Field(0.0, ge=0, le=60, description="Test only: seconds each task sleeps.")

    @model_validator(mode="after")
    def _check_task_keys(self) -> "HelloWorldParams":
        for key in [*self.fail_transient, *self.fail_permanent]:
            match = _TASK_KEY.match(key)
            if not match or int(match[2]) >= self.n:
                raise ValueError(
                    f"task key {key!r} does not exist: use 'greet-<i>' or 'reply-<i>' "
                    f"with 0 <= i < n ({self.n})"
                )
        return self


class HelloWorldResult(BaseModel):
    """What a finished hello_world reports."""

    greetings: int
    replies: int
    matched: int
    first_reply: str
    last_reply: str


def _fail_if_asked(params: HelloWorldParams) -> None:
    ctx = current_task()
    if ctx.key in params.fail_permanent and ctx.job_attempt == 1:
        raise PermanentError(f"{ctx.key}: permanent failure injected by fail_permanent")
    if ctx.key in params.fail_transient and ctx.attempt <= params.transient_failures:
        raise TransientError(
            f"{ctx.key}: transient failure injected by fail_transient (attempt {ctx.attempt})"
        )


def greet(index: int, params: HelloWorldParams) -> str:
    """Say hello number index."""
    if params.sleep_s:
        time.sleep(params.sleep_s)
    _fail_if_asked(params)
    return f"{params.message} #{index}"


def reply(greeting: str, index: int, params: HelloWorldParams) -> str:
    """Answer one greeting."""
    if params.sleep_s:
        time.sleep(params.sleep_s)
    _fail_if_asked(params)
    return f"reply #{index} to '{greeting}'"


def plan_greetings(params: HelloWorldParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """n greeting tasks."""
    return [TaskSpec(key=f"greet-{i}", args=(i, params)) for i in range(params.n)]


def plan_replies(params: HelloWorldParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One reply per greeting, fed with that greeting's output."""
    return [
        TaskSpec(key=f"reply-{i}", args=(greeting, i, params))
        for i, greeting in enumerate(outputs["greet"].handles())
    ]


def summarize_replies(params: HelloWorldParams, outputs: Mapping[str, StageOutputs]) -> HelloWorldResult:
    """Check every reply answers its own greeting and count them."""
    replies = outputs["reply"].values()
    matched = sum(1 for i, text in enumerate(replies) if text == f"reply #{i} to '{params.message} #{i}'")
    if matched != params.n:
        raise PermanentError(f"only {matched} of {params.n} replies match their greeting")
    return HelloWorldResult(
        greetings=len(outputs["greet"]),
        replies=len(replies),
        matched=matched,
        first_reply=replies[0],
        last_reply=replies[-1],
    )


HELLO_WORLD = JobType(
    name="hello_world",
    description="Greets n times, then replies to each greeting: a smoke test of the engine.",
    params=HelloWorldParams,
    stages=(
        Stage("greet", plan=plan_greetings, run=greet, durable=True, description="n greetings"),
        Stage("reply", plan=plan_replies, run=reply, description="one reply per greeting"),
    ),
    finalize=summarize_replies,
)
