"""stac_catalog_container: list a container's rasters, read a STAC item off each, load them into pgstac."""

import datetime as dt
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import rasterio.errors
from pydantic import BaseModel, Field, field_validator

from rayetl.errors import InvalidRequest, NotFound, PermanentError
from rayetl.pipelines.containers import (
    ContainerListingParams,
    describe_listing,
    list_files,
    plan_listing,
    require_container,
)
from rayetl.pipelines.contract import JobType, Stage, StageOutputs, TaskSpec, current_task
from rayetl.pipelines.raster_params import RASTER_EXTENSIONS
from rayetl.pipelines.raster_stac import file_sha256, raster_item, raster_item_id, write_items
from rayetl.pipelines.stac_params import CollectionId
from rayetl.store.objects import Container, open_container

__all__ = [
    "STAC_CATALOG_CONTAINER",
    "ExtractedItem",
    "LoadedBatch",
    "StacCatalogContainerParams",
    "StacCatalogContainerResult",
]

# Failures named in the job's error when every file failed; the result lists them all otherwise.
_FAILURES_IN_ERROR = 5


class StacCatalogContainerParams(ContainerListingParams):
    """Parameters of stac_catalog_container."""

    extensions: list[str] = Field(
        default_factory=lambda: sorted(RASTER_EXTENSIONS),
        description=f"Only these extensions, among {', '.join(RASTER_EXTENSIONS)} (case-insensitive).",
    )
    collection_id: CollectionId = Field(
        "system-rasters", description="STAC collection the items go to (created if missing)."
    )
    batch_size: int = Field(500, ge=1, le=5_000, description="Items per load task (one transaction each).")
    checksum: bool = Field(
        True, description="Record each file's sha256 (file:checksum); reads every file whole."
    )

    @field_validator("extensions")
    @classmethod
    def _only_rasters(cls, value: list[str]) -> list[str]:
        # Runs after ContainerListingParams' validator has lower-cased them and dropped the dots.
        others = [ext for ext in value if ext not in RASTER_EXTENSIONS]
        if others:
            raise ValueError(
                f"{', '.join(others)} {'is' if len(others) == 1 else 'are'} not a raster format this job "
                f"reads; use some of: {', '.join(RASTER_EXTENSIONS)}"
            )
        if not value:
            raise ValueError(f"name at least one extension, e.g. {list(RASTER_EXTENSIONS)}")
        return value


class ExtractedItem(BaseModel):
    """One extract task's outcome: the item as JSON, or why the file could not be read."""

    path: str
    item_id: str
    item: dict[str, Any] | None = None
    error: str | None = None


class FileFailure(BaseModel):
    """A file that gave no item, and why."""

    path: str
    error: str


class LoadedBatch(BaseModel):
    """One load task's outcome (durable): items written, files that failed, the collection's extent."""

    item_count: int
    failed: list[FileFailure]
    extent: dict[str, Any] | None


class StacCatalogContainerResult(BaseModel):
    """What a finished stac_catalog_container reports."""

    container: str
    prefix: str
    collection_id: str
    file_count: int
    item_count: int
    failed_count: int
    failed: list[FileFailure]
    extent: dict[str, Any] | None
    message: str


def extract_item(
    entry: dict[str, Any], container_name: str, *, collection_id: str, checksum: bool
) -> ExtractedItem:
    """Read one raster's STAC item; a file that cannot be read is reported, not raised."""
    ctx = current_task()
    container = open_container(ctx.settings, container_name)
    path = entry["path"]
    item_id = raster_item_id(container_name, path)
    modified = entry.get("modified")
    try:
        digest = _sha256(container, path) if checksum else None
        with _gdal_source(container, path) as (gdal_path, gdal_env):
            item = raster_item(
                gdal_path,
                item_id=item_id,
                collection_id=collection_id,
                href=container.resolve(path),
                asset_title=path.rpartition("/")[2],
                size_bytes=entry["size_bytes"],
                sha256=digest,
                modified=dt.datetime.fromisoformat(modified) if modified else None,
                properties={
                    "rayetl:source": {"container": container_name, "path": path, "job_id": ctx.job_id}
                },
                gdal_env=gdal_env,
                label=path,
            )
    except (PermanentError, NotFound, rasterio.errors.RasterioError) as exc:
        # Bad data or a file gone since the listing: this file's problem, not the job's. Other
        # errors (storage timeouts, connection resets) propagate so that the task is retried.
        return ExtractedItem(path=path, item_id=item_id, error=str(exc))
    return ExtractedItem(
        path=path, item_id=item_id, item=item.to_dict(include_self_link=False, transform_hrefs=False)
    )


def _sha256(container: Container, path: str) -> str:
    with container.open(path, "rb") as handle:
        return file_sha256(handle)


@contextmanager
def _gdal_source(container: Container, path: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Where GDAL reads a file of a container, and its options: in place when it can, else a copy."""
    try:
        gdal_path = container.gdal_path(path)
    except InvalidRequest:
        # A backend GDAL cannot read (e.g. memory://): read a downloaded copy instead.
        with container.local_path(path) as local:
            yield local, {}
        return
    yield gdal_path, container.gdal_env()


def load_items(*extracted: ExtractedItem, collection_id: str) -> LoadedBatch:
    """Upsert one batch of extracted items into the collection (created if missing)."""
    items = [e.item for e in extracted if e.item is not None]
    failed = [FileFailure(path=e.path, error=e.error or "no item") for e in extracted if e.item is None]
    if not items:
        return LoadedBatch(item_count=0, failed=failed, extent=None)
    written = write_items(current_task().settings, collection_id, items, batch_size=len(items))
    return LoadedBatch(item_count=written.item_count, failed=failed, extent=written.extent)


def plan_extract(params: StacCatalogContainerParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One extract task per listed file (each reads the file: its cost dwarfs a task's)."""
    (listing,) = outputs["list"].values()
    options = {"collection_id": params.collection_id, "checksum": params.checksum}
    return [
        TaskSpec(key=f"file-{i}", args=(entry, params.container_name), kwargs=options)
        for i, entry in enumerate(listing)
    ]


def plan_load(params: StacCatalogContainerParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One load task per batch_size extracted items; the items travel as object refs."""
    handles = outputs["extract"].handles()
    return [
        TaskSpec(
            key=f"batch-{start // params.batch_size}",
            args=tuple(handles[start : start + params.batch_size]),
            kwargs={"collection_id": params.collection_id},
        )
        for start in range(0, len(handles), params.batch_size)
    ]


def summarize_catalog(
    params: StacCatalogContainerParams, outputs: Mapping[str, StageOutputs]
) -> StacCatalogContainerResult:
    """Totals and failures; no file matched is a valid outcome, no file readable fails the job."""
    batches = [LoadedBatch.model_validate(b) for b in outputs["load"].values()] if "load" in outputs else []
    failed = sorted((f for b in batches for f in b.failed), key=lambda f: f.path)
    item_count = sum(b.item_count for b in batches)
    file_count = item_count + len(failed)
    if file_count and not item_count:
        named = "; ".join(f.error for f in failed[:_FAILURES_IN_ERROR])
        more = f"; and {len(failed) - _FAILURES_IN_ERROR} more" if len(failed) > _FAILURES_IN_ERROR else ""
        where = f"container {params.container_name!r}" + (
            f" under {params.prefix!r}" if params.prefix else ""
        )
        raise PermanentError(f"none of the {file_count} rasters in {where} could be read: {named}{more}")
    if not file_count:
        message = describe_listing(params, 0)
    else:
        message = f"{item_count} items written to collection {params.collection_id!r} from " + (
            describe_listing(params, file_count)
        )
        if failed:
            message += f"; {len(failed)} could not be read (see failed)"
    return StacCatalogContainerResult(
        container=params.container_name,
        prefix=params.prefix,
        collection_id=params.collection_id,
        file_count=file_count,
        item_count=item_count,
        failed_count=len(failed),
        failed=failed,
        extent=_merged_extent([b.extent for b in batches if b.extent]),
        message=message,
    )


def _merged_extent(extents: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The union of the extents the batches left (each covers the collection when it was written)."""
    if not extents:
        return None
    boxes = [bbox for e in extents for bbox in e["spatial"]["bbox"]]
    intervals = [interval for e in extents for interval in e["temporal"]["interval"]]
    starts = [i[0] for i in intervals if i[0]]
    ends = [i[1] for i in intervals if i[1]]
    return {
        "spatial": {
            "bbox": [
                [
                    min(b[0] for b in boxes),
                    min(b[1] for b in boxes),
                    max(b[2] for b in boxes),
                    max(b[3] for b in boxes),
                ]
            ]
        },
        "temporal": {"interval": [[min(starts) if starts else None, max(ends) if ends else None]]},
    }


STAC_CATALOG_CONTAINER = JobType(
    name="stac_catalog_container",
    description=(
        "Lists the rasters of a container (prefix, extensions, limit), reads a STAC item off each "
        "in parallel and upserts them into a pgstac collection in batches."
    ),
    params=StacCatalogContainerParams,
    preflight=require_container,
    stages=(
        Stage("list", plan=plan_listing, run=list_files, durable=True, description="list rasters"),
        Stage(
            "extract",
            plan=plan_extract,
            run=extract_item,
            empty_ok=True,
            num_cpus=0.5,
            description="one STAC item per raster",
        ),
        Stage(
            "load",
            plan=plan_load,
            run=load_items,
            durable=True,
            num_cpus=0.25,
            description="upsert the items into pgstac in batches",
        ),
    ),
    finalize=summarize_catalog,
)
