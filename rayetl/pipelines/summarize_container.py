"""summarize_container: counts and bytes by extension and by folder, and the largest files."""

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from rayetl.pipelines.containers import (
    ContainerListingParams,
    describe_listing,
    list_files,
    plan_listing,
    require_container,
)
from rayetl.pipelines.contract import JobType, Stage, StageOutputs, TaskSpec

__all__ = ["SUMMARIZE_CONTAINER", "ContainerSummary", "SummarizeContainerParams"]

_PARTITION = 5_000
_LARGEST = 10


class SummarizeContainerParams(ContainerListingParams):
    """Parameters of summarize_container (a larger default limit than a listing)."""

    limit: int = Field(100_000, ge=1, le=1_000_000, description="At most this many files.")


class GroupTotals(BaseModel):
    """Files and bytes of one group."""

    files: int = 0
    bytes: int = 0


class ContainerSummary(BaseModel):
    """Totals of a set of files; partial summaries merge into the job's result."""

    file_count: int = 0
    total_bytes: int = 0
    by_extension: dict[str, GroupTotals] = Field(default_factory=dict)
    by_folder: dict[str, GroupTotals] = Field(default_factory=dict)
    largest: list[dict[str, Any]] = Field(default_factory=list)


class SummarizeContainerResult(ContainerSummary):
    """What a finished summarize_container reports."""

    container: str
    prefix: str
    message: str


def _totals(counts: Counter, sizes: Counter) -> dict[str, GroupTotals]:
    return {key: GroupTotals(files=counts[key], bytes=sizes[key]) for key in sorted(counts)}


def summarize_files(entries: list[dict[str, Any]]) -> ContainerSummary:
    """Summarize one partition of the listing."""
    ext_files, ext_bytes, dir_files, dir_bytes = Counter(), Counter(), Counter(), Counter()
    for entry in entries:
        folder, _, name = entry["path"].rpartition("/")
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        ext_files[ext] += 1
        ext_bytes[ext] += entry["size_bytes"]
        dir_files[folder] += 1
        dir_bytes[folder] += entry["size_bytes"]
    largest = sorted(entries, key=lambda e: (-e["size_bytes"], e["path"]))[:_LARGEST]
    return ContainerSummary(
        file_count=len(entries),
        total_bytes=sum(e["size_bytes"] for e in entries),
        by_extension=_totals(ext_files, ext_bytes),
        by_folder=_totals(dir_files, dir_bytes),
        largest=[{"path": e["path"], "size_bytes": e["size_bytes"]} for e in largest],
    )


def merge_summaries(parts: list[ContainerSummary]) -> ContainerSummary:
    """Add partial summaries together."""
    files = {"by_extension": (Counter(), Counter()), "by_folder": (Counter(), Counter())}
    for part in parts:
        for field_name, (count, size) in files.items():
            for key, totals in getattr(part, field_name).items():
                count[key] += totals.files
                size[key] += totals.bytes
    largest = sorted((e for p in parts for e in p.largest), key=lambda e: (-e["size_bytes"], e["path"]))[
        :_LARGEST
    ]
    return ContainerSummary(
        file_count=sum(p.file_count for p in parts),
        total_bytes=sum(p.total_bytes for p in parts),
        by_extension=_totals(*files["by_extension"]),
        by_folder=_totals(*files["by_folder"]),
        largest=largest,
    )


def plan_partitions(params: ContainerListingParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """Cut the listing into partitions summarized in parallel."""
    (listing,) = outputs["list"].values()
    return [
        TaskSpec(key=f"part-{i // _PARTITION}", args=(listing[i : i + _PARTITION],))
        for i in range(0, len(listing), _PARTITION)
    ]


def summarize_all(
    params: SummarizeContainerParams, outputs: Mapping[str, StageOutputs]
) -> SummarizeContainerResult:
    """Merge the partitions; an empty container is a valid, stated outcome."""
    parts = outputs["summarize"].values() if "summarize" in outputs else []
    total = merge_summaries(parts)
    message = describe_listing(params, total.file_count)
    return SummarizeContainerResult(
        container=params.container_name, prefix=params.prefix, message=message, **total.model_dump()
    )


SUMMARIZE_CONTAINER = JobType(
    name="summarize_container",
    description="Counts files and bytes by extension and by folder, and finds the largest files.",
    params=SummarizeContainerParams,
    preflight=require_container,
    stages=(
        Stage("list", plan=plan_listing, run=list_files, durable=True, description="list files"),
        Stage(
            "summarize",
            plan=plan_partitions,
            run=summarize_files,
            empty_ok=True,
            description="summarize partitions of 5,000 files",
        ),
    ),
    finalize=summarize_all,
)
