"""unpublish_raster: reverse process_raster — delete the COG (or its tiles and VRT) and the STAC item."""

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, Field, field_validator

from rayetl.errors import Conflict, InvalidRequest, NotFound
from rayetl.pipelines.containers import output_container_or_default
from rayetl.pipelines.contract import JobParams, JobType, Stage, StageOutputs, TaskSpec, current_task
from rayetl.pipelines.raster_stac import raster_item_id
from rayetl.settings import Settings
from rayetl.store import pgstac
from rayetl.store.db import connect
from rayetl.store.object_names import normalize_path
from rayetl.store.objects import open_container
from rayetl.store.published_rasters import PublishedRaster, find_published, forget_published

__all__ = ["UNPUBLISH_RASTER", "UnpublishRasterParams", "UnpublishRasterResult"]


class UnpublishRasterParams(JobParams):
    """Parameters of unpublish_raster."""

    output_container: str | None = Field(
        None,
        validate_default=True,
        description="Container of the output (default: the configured output one).",
    )
    output_path: str = Field(
        ..., min_length=1, max_length=1024, description="The COG, or the .tif/.vrt path of a tiled output."
    )
    collection_id: str = Field(
        "system-rasters", description="Collection of the item, for outputs rayetl did not publish (force)."
    )
    force: bool = Field(False, description="Delete the file even though rayetl did not publish it.")

    _default_output = field_validator("output_container", mode="before")(output_container_or_default)

    @field_validator("output_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        try:
            return normalize_path(value)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None


class UnpublishRasterResult(BaseModel):
    """What unpublish_raster removed, and the job that had published the output."""

    output_container: str
    output_path: str
    files_deleted: list[str]
    stac_item_id: str
    stac_item_deleted: bool
    published_by_job: str | None
    published_by_link: str | None


def _candidates(path: str) -> list[str]:
    """A tiled output is recorded under its VRT; accept the .tif path the job was given too."""
    return [path, str(PurePosixPath(path).with_suffix(".vrt"))]


def _find(conn: Any, container: str, path: str) -> PublishedRaster | None:
    return next(filter(None, (find_published(conn, container, p) for p in _candidates(path))), None)


def require_published(params: UnpublishRasterParams, settings: Settings) -> None:
    """The output must exist and, unless forced, have been published by rayetl (Conflict otherwise)."""
    container = open_container(settings, params.output_container)
    with connect(settings) as conn:
        published = _find(conn, container.name, params.output_path)
    if published is not None:
        return
    if not container.exists(params.output_path):
        raise NotFound(
            f"nothing published at {params.output_path!r} in container {container.name!r}: "
            "check the output path (`rayetl storage ls` lists the container)"
        )
    if not params.force:
        raise Conflict(
            f"{params.output_path!r} in container {container.name!r} was not published by rayetl; "
            "submit again with force=true to delete it anyway"
        )


def unpublish(params: UnpublishRasterParams) -> dict[str, Any]:
    """Delete the files (the main one first, so the output disappears at once), the item, the record."""
    ctx = current_task()
    container = open_container(ctx.settings, params.output_container)
    with connect(ctx.settings) as conn:
        published = _find(conn, container.name, params.output_path)
    if published is None:
        require_published(params, ctx.settings)  # the world may have changed since submission
        files, main = [params.output_path], params.output_path
        collection_id, item_id = params.collection_id, raster_item_id(container.name, params.output_path)
    else:
        files, main = published.files, published.path
        collection_id, item_id = published.collection_id, published.item_id
    deleted = []
    for path in reversed(files):
        if container.exists(path):
            container.delete(path)
            deleted.append(path)
    item_deleted = pgstac.delete_item(ctx.settings, collection_id, item_id)
    if published is not None:
        with connect(ctx.settings) as conn:
            forget_published(conn, container.name, published.path)
    publisher = published.job_id if published else None
    return UnpublishRasterResult(
        output_container=container.name,
        output_path=main,
        files_deleted=deleted,
        stac_item_id=item_id,
        stac_item_deleted=item_deleted,
        published_by_job=publisher,
        published_by_link=f"/api/jobs/{publisher}" if publisher else None,
    ).model_dump(mode="json")


def plan_unpublish(params: UnpublishRasterParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task."""
    return [TaskSpec(key="unpublish", args=(params,))]


def finalize(params: UnpublishRasterParams, outputs: Mapping[str, StageOutputs]) -> UnpublishRasterResult:
    """What was removed."""
    (removed,) = outputs["unpublish"].values()
    return UnpublishRasterResult(**removed)


UNPUBLISH_RASTER = JobType(
    name="unpublish_raster",
    description="Deletes what process_raster published (the COG or its tiles and VRT) and its STAC item.",
    params=UnpublishRasterParams,
    stages=(Stage("unpublish", plan=plan_unpublish, run=unpublish, durable=True, num_cpus=0),),
    finalize=finalize,
    preflight=require_published,
)
