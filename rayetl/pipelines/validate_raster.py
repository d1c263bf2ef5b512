"""validate_raster: open a raster in place and report its structure, COG validity, kind and problems."""

from collections.abc import Mapping
from typing import Any

from rayetl.pipelines.contract import JobType, Stage, StageOutputs, TaskSpec, current_task
from rayetl.pipelines.raster_inspect import RasterReport, inspect_raster
from rayetl.pipelines.raster_io import open_raster
from rayetl.pipelines.raster_params import RasterSource, check_raster_source
from rayetl.store.objects import open_container

__all__ = ["VALIDATE_RASTER", "validate"]


def validate(params: RasterSource) -> dict[str, Any]:
    """Inspect the raster; a file GDAL cannot open or decode fails the task for good."""
    container = open_container(current_task().settings, params.container_name)
    with open_raster(container, params.blob_name) as dataset:
        report = inspect_raster(dataset, source=f"{params.container_name}/{params.blob_name}")
    return report.model_dump(mode="json")


def plan_validate(params: RasterSource, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task."""
    return [TaskSpec(key="validate", args=(params,))]


def finalize(params: RasterSource, outputs: Mapping[str, StageOutputs]) -> RasterReport:
    """The report."""
    (report,) = outputs["validate"].values()
    return RasterReport.model_validate(report)


VALIDATE_RASTER = JobType(
    name="validate_raster",
    description=(
        "Reports a raster's driver, size, bands, dtypes, nodata, CRS, bounds (native and EPSG:4326), "
        "tiling, overviews, compression, COG validity, kind and recommended COG profile, and its problems."
    ),
    params=RasterSource,
    preflight=check_raster_source,
    stages=(
        Stage("validate", plan=plan_validate, run=validate, durable=True, description="inspect the file"),
    ),
    finalize=finalize,
)
