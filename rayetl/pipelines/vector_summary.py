"""What preparing a vector file's chunks did: counts, type, extent and rejects, and the messages."""

from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel

from rayetl.pipelines.vector_columns import MAX_REPORTED_ROWS

__all__ = ["ChunkSummary", "RejectedRow", "merge_summaries", "nothing_loaded_message", "rejected_message"]


class RejectedRow(BaseModel):
    """A source row left out, and why."""

    row: int
    reason: str


class ChunkSummary(BaseModel):
    """What preparing a batch did: counts for the job result, and the chunk's type and extent."""

    rows_in: int
    rows_out: int
    dropped_null: int = 0
    dropped_empty: int = 0
    repaired: int = 0
    rejected: int = 0
    rejected_rows: list[RejectedRow] = []  # the first MAX_REPORTED_ROWS, in source order
    geometry_type: str | None = None  # e.g. "MultiPolygon"; None when no row is left
    bbox: list[float] | None = None  # [xmin, ymin, xmax, ymax] in EPSG:4326
    renamed: dict[str, str] = {}  # source column name -> table column name


def merge_summaries(summaries: Iterable[ChunkSummary]) -> ChunkSummary:
    """The summaries of a file's chunks as one: counts summed, extents joined, first rejects kept."""
    summaries = list(summaries)
    counts = ("rows_in", "rows_out", "dropped_null", "dropped_empty", "repaired", "rejected")
    boxes = np.array([s.bbox for s in summaries if s.bbox is not None]).reshape(-1, 4)
    types = [s.geometry_type for s in summaries if s.geometry_type]
    rejected_rows = sorted((r for s in summaries for r in s.rejected_rows), key=lambda r: r.row)
    return ChunkSummary(
        **{name: sum(getattr(s, name) for s in summaries) for name in counts},
        rejected_rows=rejected_rows[:MAX_REPORTED_ROWS],
        geometry_type=types[0] if types else None,
        bbox=[*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)] if len(boxes) else None,
        renamed=next((s.renamed for s in summaries if s.renamed), {}),
    )


def rejected_message(source: str, summary: ChunkSummary) -> str:
    """Why a load with on_invalid="fail" stops: how many rows cannot be loaded, and the first ones."""
    first = "; ".join(f"row {r.row}: {r.reason}" for r in summary.rejected_rows)
    return (
        f"{source}: {summary.rejected} row(s) cannot be loaded (first: {first}). Fix them in the file, "
        "or set converter_params.on_invalid='skip' to load the other rows and report these"
    )


def nothing_loaded_message(source: str, summary: ChunkSummary) -> str:
    """Why a file produced no rows: zero features, or what dropped every one of them."""
    if summary.rows_in == 0:
        return f"{source}: the file holds zero features; nothing to load"
    causes = [
        (summary.dropped_null, "null geometries"),
        (summary.dropped_empty, "empty geometries"),
        (summary.rejected, "rejected rows (see rejected_rows)"),
    ]
    why = ", ".join(f"{label} ({n} of {summary.rows_in})" for n, label in causes if n)
    return f"{source}: every feature dropped: {why}; nothing to load. Check the file's geometries"
