"""process_raster's parameters, where its outputs go, and the checks made before anything is queued."""

from pathlib import PurePosixPath
from typing import Literal

from pydantic import Field, field_validator, model_validator
from rasterio.crs import CRS
from rasterio.errors import CRSError

from rayetl.errors import Conflict, InvalidRequest
from rayetl.pipelines.containers import output_container_or_default
from rayetl.pipelines.raster_params import COG_COMPRESSIONS, RasterSource, check_raster_source
from rayetl.pipelines.stac_params import CollectionId
from rayetl.settings import Settings
from rayetl.store.object_names import normalize_path
from rayetl.store.objects import Container, open_container

__all__ = [
    "FAULTS",
    "OVERVIEW_RESAMPLINGS",
    "ProcessRasterParams",
    "check_output_free",
    "output_files",
    "preflight",
]

# GDAL's overview resampling methods (gdaladdo -r).
OVERVIEW_RESAMPLINGS = (
    "nearest",
    "average",
    "bilinear",
    "cubic",
    "cubic_spline",
    "lanczos",
    "mode",
    "gauss",
    "rms",
)
# Test only: faults injected on a task's first attempt, to prove a failed job leaves no partial output.
FAULTS = ("fail_last_tile",)


class ProcessRasterParams(RasterSource):
    """Parameters of process_raster."""

    output_container: str | None = Field(
        None, validate_default=True, description="Container of the COG (default: the configured output one)."
    )
    output_path: str | None = Field(
        None,
        max_length=1024,
        description="Path of the COG, ending in .tif (default: the source's path with .tif). "
        "A tiled output puts its mosaic at the same path with .vrt and its tiles in a folder of that name.",
    )
    target_crs: str | None = Field(None, description="Reproject to this CRS, e.g. 'EPSG:3857'.")
    cog_profile: Literal[COG_COMPRESSIONS] | None = Field(  # type: ignore[valid-type]
        None, description="Compression (default: recommended by validation for the raster's kind)."
    )
    overview_resampling: Literal[OVERVIEW_RESAMPLINGS] | None = Field(  # type: ignore[valid-type]
        None, description="Resampling of the overviews (default: recommended by validation)."
    )
    nodata: float | None = Field(None, description="Nodata value of the output, overriding the source's.")
    tile_size_px: int = Field(
        8192,
        ge=512,
        le=65536,
        multiple_of=512,
        description="Rasters wider or taller than this are cut into tiles of this size, one COG each.",
    )
    collection_id: CollectionId = Field("system-rasters", description="STAC collection of the item.")
    if_exists: Literal["fail", "replace"] = Field(
        "fail", description="When the output exists: fail, or replace it (and its STAC item)."
    )
    inject_faults: list[Literal[FAULTS]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="Test only: fail a task's first attempt at a chosen point."
    )

    _default_output = field_validator("output_container", mode="before")(output_container_or_default)

    @field_validator("target_crs")
    @classmethod
    def _check_crs(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            CRS.from_user_input(value)
        except CRSError as exc:
            raise ValueError(
                f"target_crs {value!r} is not a CRS GDAL knows ({exc}): use e.g. 'EPSG:3857' or a WKT string"
            ) from None
        return value

    @field_validator("output_path")
    @classmethod
    def _check_output_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            path = normalize_path(value)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None
        if PurePosixPath(path).suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"output_path {value!r} must end in .tif or .tiff: it names a GeoTIFF")
        return path

    @model_validator(mode="after")
    def _derive_output_path(self) -> "ProcessRasterParams":
        if self.output_path is None:
            object.__setattr__(self, "output_path", str(PurePosixPath(self.blob_name).with_suffix(".tif")))
        return self

    @property
    def mosaic_path(self) -> str:
        """Where a tiled output's VRT goes."""
        return str(PurePosixPath(self.output_path).with_suffix(".vrt"))

    @property
    def tiles_folder(self) -> str:
        """Where a tiled output's tile COGs go."""
        return str(PurePosixPath(self.output_path).with_suffix(""))


def output_files(params: ProcessRasterParams, tile_keys: list[str] | None) -> list[str]:
    """Every file of the output, the main one last: the COG, or the tiles and then their VRT."""
    if tile_keys is None:
        return [params.output_path]
    return [f"{params.tiles_folder}/{key}.tif" for key in tile_keys] + [params.mosaic_path]


def check_output_free(params: ProcessRasterParams, container: Container) -> None:
    """With if_exists=fail, neither the COG nor a mosaic may exist at the output path (Conflict)."""
    if params.if_exists != "fail":
        return
    for path in (params.output_path, params.mosaic_path):
        if container.exists(path):
            raise Conflict(
                f"{path!r} already exists in container {container.name!r}: submit with if_exists=replace "
                "to replace it, choose another output_path, or unpublish_raster it first"
            )


def preflight(params: ProcessRasterParams, settings: Settings) -> None:
    """Before anything is queued: the source exists, the output container exists, the output is free."""
    check_raster_source(params, settings)
    output = open_container(settings, params.output_container, create=_is_default_output(params, settings))
    check_output_free(params, output)


def _is_default_output(params: ProcessRasterParams, settings: Settings) -> bool:
    # The configured output container is created on first use, as `rayetl up` does; a container
    # named by the job must exist, so that a typo is a 404 rather than a new folder.
    return params.output_container == settings.default_output_container
