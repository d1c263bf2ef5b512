"""What the raster jobs share: the formats they accept, a source file's params and its preflight."""

from pathlib import PurePosixPath

from pydantic import Field, field_validator

from rayetl.errors import InvalidRequest
from rayetl.pipelines.containers import container_or_default
from rayetl.pipelines.contract import JobParams
from rayetl.settings import Settings
from rayetl.store.object_names import normalize_path
from rayetl.store.objects import ObjectInfo, open_container

__all__ = [
    "COG_COMPRESSIONS",
    "RASTER_EXTENSIONS",
    "RasterSource",
    "check_raster_extension",
    "check_raster_source",
]

# Single-file rasters that GDAL reads in place (a local path or /vsiaz/), whatever the container:
#   tif, tiff  GeoTIFF and COG, the format the raster jobs write;
#   jp2        JPEG 2000 (OpenJPEG is in rasterio's wheels), common for orthophotos and Sentinel-2;
#   img        ERDAS Imagine, common in older GIS archives.
# Left out on purpose: vrt (it names other files by any path, so it could read outside its container),
# nc/hdf/grib (several variables as subdatasets: a job would need a parameter to pick one), png/jpg
# and asc (georeferenced only by sidecar files: .wld/.aux.xml/.prj).
RASTER_EXTENSIONS = ("tif", "tiff", "jp2", "img")
# Compressions the COG jobs write, lossless first; jpeg and webp take 8-bit RGB(A) only.
COG_COMPRESSIONS = ("deflate", "zstd", "lzw", "jpeg", "webp")


def check_raster_extension(blob_name: str) -> str:
    """The lower-case extension of blob_name; InvalidRequest naming the supported ones otherwise."""
    supported = ", ".join(RASTER_EXTENSIONS)
    suffix = PurePosixPath(blob_name).suffix.lower().lstrip(".")
    if not suffix:
        raise InvalidRequest(f"{blob_name!r} has no extension; raster files must end in one of: {supported}")
    if suffix not in RASTER_EXTENSIONS:
        raise InvalidRequest(
            f"{blob_name!r}: extension .{suffix} is not a raster format rayetl reads; supported: {supported}"
        )
    return suffix


class RasterSource(JobParams):
    """A raster file in a container: the params every raster job starts from."""

    blob_name: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        description=f"Path of the raster in its container ({', '.join(RASTER_EXTENSIONS)}).",
    )
    container_name: str | None = Field(
        None, validate_default=True, description="Container of the file (default: the configured one)."
    )

    _default_container = field_validator("container_name", mode="before")(container_or_default)

    @field_validator("blob_name")
    @classmethod
    def _check_blob(cls, value: str) -> str:
        try:
            path = normalize_path(value)
            check_raster_extension(path)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None
        return path


def check_raster_source(params: RasterSource, settings: Settings) -> ObjectInfo:
    """Preflight: the container and the file exist (NotFound naming both otherwise)."""
    container = open_container(settings, params.container_name)
    return container.info(params.blob_name)
