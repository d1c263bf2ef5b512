"""The vocabulary of vector sources: formats, how to read them, what a source holds, and raw batches.

Shared by the readers (vector_source for GDAL, vector_csv, vector_parquet) and the steps after them.
"""

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, model_validator
from pyproj import CRS
from pyproj.exceptions import CRSError

from rayetl.errors import InvalidRequest
from rayetl.pipelines.contract import JobParams

__all__ = [
    "ConverterParams",
    "LayerInfo",
    "RawBatch",
    "SourceInfo",
    "VectorFormat",
    "infer_format",
    "parse_crs",
]


class VectorFormat(StrEnum):
    """A vector file format rayetl loads."""

    CSV = "csv"
    GEOJSON = "geojson"
    GPKG = "gpkg"
    KML = "kml"
    KMZ = "kmz"
    SHP = "shp"
    ZIP = "zip"
    FGB = "fgb"
    PARQUET = "parquet"


_EXTENSIONS = {fmt.value: fmt for fmt in VectorFormat} | {"json": VectorFormat.GEOJSON}


def infer_format(blob_name: str, file_extension: str | None = None) -> VectorFormat:
    """The format from file_extension, else from the name's extension; InvalidRequest if unsupported."""
    known = ", ".join(sorted(_EXTENSIONS))
    suffix = PurePosixPath(blob_name).suffix.lower().lstrip(".")
    if file_extension is not None:
        given = file_extension.lower().lstrip(".")
        if given not in _EXTENSIONS:
            raise InvalidRequest(f"file_extension {file_extension!r} is not supported; use one of: {known}")
        if suffix in _EXTENSIONS and _EXTENSIONS[suffix] != _EXTENSIONS[given]:
            raise InvalidRequest(
                f"{blob_name!r} is named like a .{suffix} file but file_extension is {file_extension!r}; "
                "leave file_extension out to use the name's extension, or fix the one that is wrong"
            )
        return _EXTENSIONS[given]
    if not suffix:
        raise InvalidRequest(f"{blob_name!r} has no extension; set file_extension to one of: {known}")
    if suffix not in _EXTENSIONS:
        raise InvalidRequest(
            f"{blob_name!r}: extension .{suffix} is not supported; supported: {known} "
            "(set file_extension if the name's extension is wrong)"
        )
    return _EXTENSIONS[suffix]


class ConverterParams(JobParams):
    """How to read a source: coordinate columns of a CSV, and which layer of a multi-layer file."""

    lat_name: str | None = Field(None, min_length=1, description="CSV column holding latitudes (Y).")
    lon_name: str | None = Field(None, min_length=1, description="CSV column holding longitudes (X).")
    wkt_column: str | None = Field(None, min_length=1, description="CSV column holding WKT geometries.")
    crs: str | None = Field(
        None, description="CRS of a CSV's coordinates (default EPSG:4326 for lat/lon columns)."
    )
    layer_name: str | None = Field(None, min_length=1, description="Layer of a GeoPackage, zip or KML.")
    on_invalid: Literal["fail", "skip"] = Field(
        "fail", description="Rows that cannot be loaded: fail the job, or skip them and report them."
    )

    @model_validator(mode="after")
    def _check(self) -> "ConverterParams":
        if self.wkt_column and (self.lat_name or self.lon_name):
            raise ValueError("Specify either wkt_column or lat_name and lon_name, not both")
        if bool(self.lat_name) != bool(self.lon_name):
            given = "lat_name" if self.lat_name else "lon_name"
            raise ValueError(f"Specify lat_name and lon_name together (only {given} was given)")
        if self.crs is not None:
            parse_crs(self.crs, "converter_params.crs")
        return self

    @property
    def has_csv_geometry(self) -> bool:
        """Whether the params say where a CSV's geometries are."""
        return bool(self.wkt_column or self.lat_name)


def parse_crs(value: str, where: str) -> CRS:
    """A CRS pyproj understands; ValueError naming where the value came from otherwise."""
    try:
        return CRS.from_user_input(value)
    except CRSError as exc:
        raise ValueError(
            f"{where} {value!r} is not a CRS pyproj knows ({exc}); use an authority code such as 'EPSG:4326'"
        ) from exc


class LayerInfo(BaseModel):
    """A layer of a source and its feature count (None when the driver cannot tell without a scan)."""

    name: str
    feature_count: int | None


class SourceInfo(BaseModel):
    """What check_source found: the layer to read, its CRS, declared geometry type and columns."""

    format: VectorFormat
    driver: str | None
    layer: str | None
    layers: list[LayerInfo]
    feature_count: int | None
    crs: str | None
    geometry_type: str | None
    columns: list[str]
    uncompressed_size_bytes: int | None = None


@dataclass(frozen=True)
class RawBatch:
    """One batch of features as read: attributes, WKB geometry, and where each row came from.

    invalid: positions (in this batch) of rows the reader could not turn into a geometry (bad WKT,
    out-of-range coordinates); their geometry is null. reasons: why, for the first of them.
    """

    source: str
    attributes: pa.Table
    geometry: pa.Array
    rows: np.ndarray  # 1-based position of each feature in the source: its fid, and for error reports
    crs: str | None
    declared_type: str | None = None
    invalid: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    reasons: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.attributes.num_rows
