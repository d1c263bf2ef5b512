"""process_raster: a raster into a Cloud Optimized GeoTIFF (or a mosaic of COG tiles) and a STAC item.

validate → cog (fan-out) → publish → catalog. validate inspects the source and plans the output grid:
one COG, or, when the grid is wider or taller than tile_size_px, windows aligned to the COG's blocks,
one task each. Every COG is validated and written to the job's hidden staging folder; publish moves
them into place (tiles first, then their VRT mosaic) and records the output, so a failed or cancelled
job leaves nothing under the output path. catalog writes one STAC item for the output.
"""

import tempfile
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import pystac
import rasterio
from pydantic import BaseModel

from rayetl.errors import PermanentError
from rayetl.pipelines.cog_write import CogOptions, OutputGrid, output_grid, write_cog
from rayetl.pipelines.contract import JobType, Stage, StageOutputs, TaskSpec, current_task
from rayetl.pipelines.process_raster_params import (
    ProcessRasterParams,
    check_output_free,
    output_files,
    preflight,
)
from rayetl.pipelines.raster_inspect import RasterReport, inspect_raster
from rayetl.pipelines.raster_io import READ_OPTIONS, open_raster, raster_errors
from rayetl.pipelines.raster_outputs import move_into_place, staged_path, staging_folder
from rayetl.pipelines.raster_stac import raster_item, raster_item_id, write_items
from rayetl.pipelines.raster_tiles import TileWindow, build_vrt, is_over_tile_size, plan_tiles, write_tile_cog
from rayetl.settings import Settings
from rayetl.store import pgstac
from rayetl.store.db import connect
from rayetl.store.objects import Container, open_container
from rayetl.store.published_rasters import PublishedRaster, find_published, record_published

__all__ = ["PROCESS_RASTER", "ProcessRasterParams", "ProcessRasterResult"]

COG_MEDIA_TYPE = pystac.MediaType.COG  # image/tiff; application=geotiff; profile=cloud-optimized
_VRT_MEDIA_TYPE = "application/xml"  # GDAL's VRT has no registered media type
_SHA256_MULTIHASH = "1220"  # file:checksum is a multihash: sha2-256 (0x12), 32 bytes (0x20)


class ProcessRasterResult(BaseModel):
    """What a finished process_raster reports."""

    source: str
    output_container: str
    output_path: str
    files: list[str]
    tiled: bool
    tiles: int
    width: int
    height: int
    crs: str | None
    cog_profile: dict[str, Any]
    size_bytes: int
    replaced_files: list[str]
    stac_item_id: str
    stac_collection: str
    findings: list[dict[str, Any]]
    timings_s: dict[str, float | None]


# -- validate -------------------------------------------------------------------------------------


def validate(params: ProcessRasterParams) -> dict[str, Any]:
    """Inspect the source, choose the COG options and plan the output grid (one COG or tiles)."""
    ctx = current_task()
    source = open_container(ctx.settings, params.container_name)
    check_output_free(params, _output(params, ctx.settings))  # the world may have changed
    with open_raster(source, params.blob_name) as dataset:
        report = inspect_raster(dataset, source=params.blob_name)
        _refuse_errors(params, report)
        options = _cog_options(params, report)
        grid = output_grid(dataset, options)
    tiles = None
    if is_over_tile_size(grid.width, grid.height, params.tile_size_px):
        tiles = plan_tiles(grid.width, grid.height, params.tile_size_px, options.blocksize)
        options = options.model_copy(update={"threads": 1})  # the tasks share the CPUs instead
    return {
        "report": report.model_dump(mode="json"),
        "options": options.model_dump(mode="json"),
        "grid": grid.model_dump(mode="json"),
        "tiles": None if tiles is None else [tile.model_dump(mode="json") for tile in tiles],
    }


def _refuse_errors(params: ProcessRasterParams, report: RasterReport) -> None:
    errors = [finding for finding in report.findings if finding.severity == "error"]
    if errors:
        listed = "; ".join(finding.message for finding in errors)
        raise PermanentError(f"{params.blob_name!r} cannot become a COG: {listed}")


def _cog_options(params: ProcessRasterParams, report: RasterReport) -> CogOptions:
    recommended = report.recommended
    compression = params.cog_profile or recommended.compression
    if compression == recommended.compression:
        predictor = recommended.predictor
    elif compression in ("jpeg", "webp"):
        predictor = None
    else:
        predictor = 3 if report.dtypes[0].startswith("float") else 2
    return CogOptions(
        compression=compression,
        predictor=predictor,
        overview_resampling=params.overview_resampling or recommended.overview_resampling,
        blocksize=recommended.blocksize,
        nodata=params.nodata,
        target_crs=params.target_crs,
    )


def plan_validate(params: ProcessRasterParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task."""
    return [TaskSpec(key="validate", args=(params,))]


# -- cog ------------------------------------------------------------------------------------------


def write_output_cog(
    params: ProcessRasterParams, plan: dict[str, Any], tile: dict[str, Any] | None
) -> dict[str, Any]:
    """Write the whole output, or one tile of it, as a validated COG into the staging folder."""
    ctx = current_task()
    source = open_container(ctx.settings, params.container_name)
    output = _output(params, ctx.settings)
    options = CogOptions(**plan["options"])
    window = None if tile is None else TileWindow(**tile)
    final = output_files(params, None if window is None else [window.key])[0]
    _maybe_fail(params, window, plan)
    gdal_path = source.gdal_path(params.blob_name)
    with (
        output.local_target(staged_path(params.output_path, ctx.job_id, final)) as local,
        rasterio.Env(**READ_OPTIONS, **source.gdal_env()),
        raster_errors(repr(params.blob_name)),
    ):
        if window is None:
            written = write_cog(gdal_path, local, options)
        else:
            grid = OutputGrid(**plan["grid"])
            written = write_tile_cog(gdal_path, window, local, options, grid=grid)
    return {"file": final, **written.model_dump(mode="json", exclude={"path"})}


def plan_cog(params: ProcessRasterParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task for the whole raster, or one per tile."""
    (plan,) = outputs["validate"].values()
    if plan["tiles"] is None:
        return [TaskSpec(key="cog", args=(params, plan, None))]
    return [TaskSpec(key=tile["key"], args=(params, plan, tile)) for tile in plan["tiles"]]


def _maybe_fail(params: ProcessRasterParams, window: TileWindow | None, plan: dict[str, Any]) -> None:
    """Test only: the last tile fails for good once the others may have been staged."""
    last = plan["tiles"][-1]["key"] if plan["tiles"] else "cog"
    if "fail_last_tile" in params.inject_faults and (window.key if window else "cog") == last:
        raise PermanentError(f"injected failure in tile {last} (inject_faults=['fail_last_tile'])")


# -- publish --------------------------------------------------------------------------------------


def publish(params: ProcessRasterParams, cogs: list[dict[str, Any]], tiled: bool) -> dict[str, Any]:
    """Write the mosaic VRT of a tiled output, move every file into place and record the output."""
    ctx = current_task()
    output = _output(params, ctx.settings)
    tile_keys = [PurePosixPath(cog["file"]).stem for cog in cogs] if tiled else None
    files = output_files(params, tile_keys)
    if tiled and not output.exists(params.mosaic_path):
        _stage_mosaic(params, output, ctx.job_id, [cog["file"] for cog in cogs])
    with connect(ctx.settings) as conn:
        previous = find_published(conn, output.name, _main_file(params, tiled))
        previous = previous or find_published(conn, output.name, _main_file(params, not tiled))
    nothing_moved_yet = output.exists(staged_path(params.output_path, ctx.job_id, files[0]))
    if nothing_moved_yet and (previous is None or previous.job_id != ctx.job_id):
        check_output_free(params, output)  # another job may have published there since validate
    move_into_place(output, params.output_path, ctx.job_id, files)
    replaced = _remove_stale(output, previous, files) if previous and previous.job_id != ctx.job_id else []
    published = PublishedRaster(
        container=output.name,
        path=files[-1],
        job_id=ctx.job_id,
        files=files,
        collection_id=params.collection_id,
        item_id=raster_item_id(output.name, files[-1]),
    )
    with connect(ctx.settings) as conn:
        record_published(conn, published)
    return {"files": files, "replaced_files": replaced, "previous": previous and previous.model_dump()}


def _stage_mosaic(params: ProcessRasterParams, output: Container, job_id: str, tiles: list[str]) -> None:
    """Build the VRT over the staged tiles, with paths relative to where it will be published."""
    folder = PurePosixPath(params.output_path).parent
    names = [str(PurePosixPath(tile).relative_to(folder)) if str(folder) != "." else tile for tile in tiles]
    staged_tiles = [output.gdal_path(staged_path(params.output_path, job_id, tile)) for tile in tiles]
    with tempfile.TemporaryDirectory(prefix="rayetl-vrt-") as tmp:
        local = f"{tmp}/{PurePosixPath(params.mosaic_path).name}"
        with rasterio.Env(**READ_OPTIONS, **output.gdal_env()):
            build_vrt(staged_tiles, local, source_names=names)
        output.put_file(local, staged_path(params.output_path, job_id, params.mosaic_path))


def _remove_stale(output: Container, previous: PublishedRaster, files: list[str]) -> list[str]:
    """Delete the files of the replaced output that the new one does not have (e.g. other tiles)."""
    stale = [path for path in previous.files if path not in files]
    for path in stale:
        if output.exists(path):
            output.delete(path)
    return stale


def _main_file(params: ProcessRasterParams, tiled: bool) -> str:
    return params.mosaic_path if tiled else params.output_path


def plan_publish(params: ProcessRasterParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task, with the COGs' descriptions (they are small)."""
    (plan,) = outputs["validate"].values()
    cogs = outputs["cog"].values()
    return [TaskSpec(key="publish", args=(params, cogs, plan["tiles"] is not None))]


# -- catalog --------------------------------------------------------------------------------------


def catalog(params: ProcessRasterParams, cogs: list[dict[str, Any]], published: dict[str, Any]) -> dict:
    """Create or replace the output's STAC item: one item, with one asset per tile when tiled."""
    ctx = current_task()
    output = _output(params, ctx.settings)
    main = published["files"][-1]
    tiled = len(published["files"]) > 1
    source_info = open_container(ctx.settings, params.container_name).info(params.blob_name)
    tile_assets = {PurePosixPath(cog["file"]).stem: _tile_asset(output, cog) for cog in cogs} if tiled else {}
    only = None if tiled else cogs[0]
    item = raster_item(
        output.gdal_path(main),
        item_id=raster_item_id(output.name, main),
        collection_id=params.collection_id,
        href=output.resolve(main),
        asset_key="mosaic" if tiled else "data",
        asset_title="VRT mosaic of the tiles" if tiled else None,
        media_type=_VRT_MEDIA_TYPE if tiled else COG_MEDIA_TYPE,
        size_bytes=only and only["size_bytes"],
        sha256=only and only["sha256"],
        modified=source_info.modified,
        properties={
            "rayetl:source": {
                "container": params.container_name,
                "path": params.blob_name,
                "job_id": ctx.job_id,
            },
            "rayetl:tiles": len(cogs) if tiled else 0,
        },
        extra_assets=tile_assets,
        gdal_env=output.gdal_env(),
    )
    previous = published.get("previous")
    if previous and previous["collection_id"] != params.collection_id:
        pgstac.delete_item(ctx.settings, previous["collection_id"], previous["item_id"])
    write_items(ctx.settings, params.collection_id, [item])
    return {"item_id": item.id, "collection_id": params.collection_id}


def _tile_asset(output: Container, cog: dict[str, Any]) -> pystac.Asset:
    return pystac.Asset(
        href=output.resolve(cog["file"]),
        media_type=COG_MEDIA_TYPE,
        roles=["data", "tile"],
        extra_fields={"file:size": cog["size_bytes"], "file:checksum": _SHA256_MULTIHASH + cog["sha256"]},
    )


def plan_catalog(params: ProcessRasterParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task."""
    (published,) = outputs["publish"].values()
    return [TaskSpec(key="catalog", args=(params, outputs["cog"].values(), published))]


# -- the job --------------------------------------------------------------------------------------


def finalize(params: ProcessRasterParams, outputs: Mapping[str, StageOutputs]) -> ProcessRasterResult:
    """Where the output went, what it is made of and its STAC item."""
    (plan,) = outputs["validate"].values()
    (published,) = outputs["publish"].values()
    (cataloged,) = outputs["catalog"].values()
    cogs = outputs["cog"].values()
    grid = OutputGrid(**plan["grid"])
    return ProcessRasterResult(
        source=f"{params.container_name}/{params.blob_name}",
        output_container=params.output_container,
        output_path=published["files"][-1],
        files=published["files"],
        tiled=plan["tiles"] is not None,
        tiles=len(plan["tiles"] or []),
        width=grid.width,
        height=grid.height,
        crs=grid.crs,
        cog_profile=plan["options"],
        size_bytes=sum(cog["size_bytes"] for cog in cogs),
        replaced_files=published["replaced_files"],
        stac_item_id=cataloged["item_id"],
        stac_collection=cataloged["collection_id"],
        findings=plan["report"]["findings"],
        timings_s={name: outputs[name].elapsed_s for name in ("validate", "cog", "publish", "catalog")},
    )


def remove_staging(params: ProcessRasterParams, job_id: str, settings: Settings) -> None:
    """A failed or cancelled job leaves no file under the output path: drop its staging folder."""
    _output(params, settings).delete_folder(staging_folder(params.output_path, job_id))


def _output(params: ProcessRasterParams, settings: Settings) -> Container:
    create = params.output_container == settings.default_output_container
    return open_container(settings, params.output_container, create=create)


PROCESS_RASTER = JobType(
    name="process_raster",
    description=(
        "Turns a raster into a validated Cloud Optimized GeoTIFF (large ones into a mosaic of COG tiles "
        "written in parallel, with a VRT), optionally reprojected, and catalogs it in STAC."
    ),
    params=ProcessRasterParams,
    stages=(
        Stage(
            "validate",
            plan=plan_validate,
            run=validate,
            durable=True,
            num_cpus=0.5,
            description="inspect, choose the profile, plan",
        ),
        Stage(
            "cog", plan=plan_cog, run=write_output_cog, durable=True, description="write and validate COGs"
        ),
        Stage(
            "publish", plan=plan_publish, run=publish, durable=True, num_cpus=0, description="move into place"
        ),
        Stage("catalog", plan=plan_catalog, run=catalog, durable=True, num_cpus=0.5, description="STAC item"),
    ),
    finalize=finalize,
    preflight=preflight,
    cleanup=remove_staging,
)
