"""How one task runs on a Ray worker: set its context, run the function, report a summary."""

import json
import os
import time
from collections.abc import Callable
from typing import Any

import ray
from pydantic import BaseModel

from rayetl.errors import PermanentError
from rayetl.pipelines.contract import StreamItem, TaskContext, task_context

__all__ = ["execute_stream_task", "execute_task", "summarize_output", "warm_worker_pool"]

_MAX_INLINE_SUMMARY_BYTES = 2_000


def summarize_output(output: Any) -> dict[str, Any]:
    """A small JSON summary of a task's output for the audit trail."""
    if isinstance(output, BaseModel):
        output = output.model_dump(mode="json")
    try:
        text = json.dumps(output)
    except (TypeError, ValueError):
        return {"type": type(output).__name__}
    if len(text) > _MAX_INLINE_SUMMARY_BYTES:
        size = len(output) if hasattr(output, "__len__") else None
        return {"type": type(output).__name__, "length": size, "json_bytes": len(text)}
    return output if isinstance(output, dict) else {"value": output}


def _durable_value(output: Any) -> Any:
    return output.model_dump(mode="json") if isinstance(output, BaseModel) else output


@ray.remote(max_retries=0, num_returns=2)
def execute_task(
    fn: Callable[..., Any], ctx: TaskContext, durable: bool, *args: Any, **kwargs: Any
) -> tuple[Any, dict[str, Any]]:
    """Run fn(*args, **kwargs) as ctx; returns (output, report). Retries belong to the coordinator."""
    started = time.time()
    with task_context(ctx):
        output = fn(*args, **kwargs)
    finished = time.time()
    return output, _report(
        started, finished, summarize_output(output), _durable_value(output) if durable else None
    )


@ray.remote(max_retries=0, num_returns="streaming")
def execute_stream_task(fn: Callable[..., Any], ctx: TaskContext, *args: Any, **kwargs: Any):
    """Run the generator fn as ctx, streaming each item to the caller as two objects.

    Per item: first a small {"item": key, "summary": ...} the coordinator reads, then the data it
    never fetches (it hands the ref to the next stage; the caller owns it). Last: {"report": ...}.
    """
    started, items = time.time(), 0
    with task_context(ctx):
        for item in fn(*args, **kwargs):
            if not isinstance(item, StreamItem):
                raise PermanentError(
                    f"{fn.__name__} yielded a {type(item).__name__}; a streaming stage yields StreamItem"
                )
            yield {"item": item.key, "summary": summarize_output(dict(item.summary))}
            yield item.data
            items += 1
    yield {"report": _report(started, time.time(), {"items": items}, None)}


@ray.remote(max_retries=0, num_cpus=0)
def _import_job_code() -> list[str]:
    """The job types this worker can now run without importing anything (all of them)."""
    from rayetl.pipelines import JOB_TYPES  # every job type's modules: geopandas, rasterio, pystac...

    return sorted(JOB_TYPES)


def warm_worker_pool() -> list[ray.ObjectRef]:
    """Have idle worker processes import the job code now, not when a job's tasks first land on them.

    A worker imports a task's module on its first task: ~1-1.5 s here, which held back a job's
    second tile or upload by as much. One warm-up task per worker a job runs at once (uploads and
    tiles take half a CPU or one); a warm worker finishes it at once, so a cold one takes the next.
    The warm-up takes no CPU, so it never waits behind a running job nor holds one back. Fire and
    forget: the refs (each to the job types its worker loaded) only tell a caller when it is done.
    """
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return [_import_job_code.remote() for _ in range(2 * cpus)]


def _report(started: float, finished: float, summary: dict[str, Any], output: Any) -> dict[str, Any]:
    return {
        "started_at": started,
        "finished_at": finished,
        "node": ray.get_runtime_context().get_node_id()[:12],
        "worker": f"pid {os.getpid()}",
        "summary": summary,
        "output": output,
    }
