"""Inspect an open raster: its structure, georeferencing, COG validity, kind and problems, as a report."""

import math
from pathlib import PurePosixPath
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field, PlainSerializer
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.dtypes import in_dtype_range
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate

from rayetl.pipelines.raster_io import raster_errors
from rayetl.pipelines.raster_profile import (
    CogProfile,
    RasterKind,
    ValueSample,
    detect_kind,
    recommend_profile,
)

__all__ = ["FINDINGS", "Finding", "RasterReport", "inspect_raster", "read_value_sample"]

SAMPLE_PX = 1024  # longest side of the decimated read the value checks look at
_GRID = 65  # points per side of the grid that bounds a raster whose corners are off the Earth


# Every finding inspect_raster reports: code → (severity, message saying what is wrong and how to fix it).
FINDINGS: dict[str, tuple[str, str]] = {
    "no_crs": ("error", "the raster has no CRS, so it cannot be placed on a map or reprojected. Set the CRS "
               "of its coordinates: gdal_edit.py -a_srs EPSG:<code> FILE"),
    "no_geotransform": ("error", "the raster has no geotransform: its coordinates are pixel numbers. "
                        "Georeference it: gdal_edit.py -a_ullr <ulx> <uly> <lrx> <lry> FILE"),
    "gcps_only": ("warning", "the raster is georeferenced by {count} ground control points only; warp it to "
                  "a regular grid first: gdalwarp -t_srs EPSG:<code> IN OUT"),
    "rotated": ("warning", "the geotransform is rotated or sheared (b={b:g}, d={d:g}); tile servers and COG "
                "readers expect north-up grids. Resample it north-up: gdalwarp IN OUT"),
    "south_up": ("warning", "rows run from south to north (pixel height {e:g} > 0); tile servers expect "
                 "north-up grids. Flip it: gdalwarp IN OUT"),
    "absurd_bounds": ("error", "bounds {bounds} are off the Earth in a geographic CRS (longitude ±180, "
                      "latitude ±90). Fix the geotransform, or the CRS if the coordinates are "
                      "projected; shift 0..360 longitudes with gdalwarp --config CENTER_LONG 0"),
    "bounds_4326_approximate": ("warning", "the raster's corners are off the Earth in its projection (e.g. a "
                                "geostationary full disk), so bounds_4326 come from the points of a "
                                "{grid}x{grid} grid that are on it, and may fall short by part of a step"),
    "bounds_4326_unknown": ("warning", "no point of the raster could be transformed to EPSG:4326; check "
                            "that its CRS is the right one"),
    "nodata_out_of_range": ("error", "nodata {nodata:g} cannot be stored in {dtype}, so no pixel is nodata; "
                            "set a value that fits: gdal_edit.py -a_nodata <value> FILE"),
    "all_nodata": ("error", "every pixel is nodata (or masked): the raster holds no data. Check the export "
                   "that produced it, or its nodata value"),
    "nan_without_nodata": ("warning", "the raster holds NaN but declares no nodata, so NaN counts as data in "
                           "statistics and overviews. Declare it: gdal_edit.py -a_nodata nan FILE"),
    "no_nodata": ("warning", "{dtype} values without a nodata value: voids (e.g. in a DEM) cannot be told "
                  "from data. If it has voids, declare the value marking them: "
                  "gdal_edit.py -a_nodata -9999 FILE"),
    "constant": ("warning", "every valid pixel seen has the same value; check that this is the band and the "
                 "nodata value you meant"),
}  # fmt: skip


def _json_float(value: float | None) -> float | str | None:
    # JSON (and Postgres jsonb) has no NaN or infinity: write them the way GDAL spells them.
    return value if value is None or math.isfinite(value) else str(value).replace("nan", "NaN")


JsonFloat = Annotated[float, PlainSerializer(_json_float, when_used="json")]


class Finding(BaseModel):
    """A problem with the raster: what is wrong and how to fix it."""

    severity: Literal["error", "warning"]
    code: str
    message: str


class RasterReport(BaseModel):
    """What validate_raster reports about a raster file."""

    source: str = Field(..., description="The file inspected.")
    driver: str
    width: int
    height: int
    count: int = Field(..., description="Number of bands.")
    dtypes: list[str]
    nodata: JsonFloat | None = Field(None, description="The nodata value ('NaN' for NaN), None if unset.")
    crs: str | None = Field(None, description="Authority code (e.g. EPSG:32618) when there is one, else WKT.")
    epsg: int | None = None
    transform: list[float] = Field(..., description="Affine geotransform a, b, c, d, e, f.")
    bounds: list[float] = Field(..., description="[minx, miny, maxx, maxy] in the raster's CRS.")
    bounds_4326: list[float] | None = Field(None, description="[west, south, east, north] in EPSG:4326.")
    resolution: list[float] = Field(..., description="Pixel size (x, y) in CRS units.")
    block_shape: list[int] = Field(..., description="Internal block (rows, cols) of band 1.")
    tiled: bool
    overviews: list[int] = Field(..., description="Internal overview factors of band 1.")
    compression: str | None
    interleave: str | None
    photometric: str | None
    color_interpretation: list[str]
    is_cog: bool
    cog_errors: list[str]
    cog_warnings: list[str]
    kind: RasterKind
    recommended: CogProfile
    findings: list[Finding]


def inspect_raster(dataset: DatasetReader, *, source: str | None = None) -> RasterReport:
    """Everything validate_raster reports about an open raster; unreadable blocks raise for good."""
    source = source or PurePosixPath(dataset.name).name
    findings: list[Finding] = []
    with raster_errors(repr(source)):
        sample = read_value_sample(dataset)
        is_cog, cog_errors, cog_warnings = cog_validate(dataset.name, quiet=True)
    crs_name, epsg = _describe_crs(dataset.crs)
    bounds = _bounds(dataset)
    kind = detect_kind(dataset, sample)
    findings += _georeferencing_findings(dataset)
    bounds_4326 = _bounds_4326(dataset, bounds, findings)
    findings += _value_findings(dataset, kind, sample)
    return RasterReport(
        source=source,
        driver=dataset.driver,
        width=dataset.width,
        height=dataset.height,
        count=dataset.count,
        dtypes=list(dataset.dtypes),
        nodata=dataset.nodata,
        crs=crs_name,
        epsg=epsg,
        transform=list(dataset.transform)[:6],
        bounds=bounds,
        bounds_4326=bounds_4326,
        resolution=list(dataset.res),
        block_shape=list(dataset.block_shapes[0]),
        tiled=dataset.block_shapes[0][1] < dataset.width,
        overviews=dataset.overviews(1),
        compression=dataset.compression.name if dataset.compression else None,
        interleave=dataset.interleaving.name if dataset.interleaving else None,
        photometric=dataset.photometric.name if dataset.photometric else None,
        color_interpretation=[c.name for c in dataset.colorinterp],
        is_cog=is_cog,
        cog_errors=cog_errors,
        cog_warnings=cog_warnings,
        kind=kind,
        recommended=recommend_profile(kind, dataset.dtypes[0], dataset.nodata),
        findings=findings,
    )


def read_value_sample(dataset: DatasetReader) -> ValueSample:
    """A decimated read (from overviews when there are some), plus the first and last full-size blocks.

    Those two blocks are read so that a truncated or corrupt file fails here: a decimated read can
    be served by overviews alone, and a truncated file loses its last blocks.
    """
    rows, cols = dataset.block_shapes[0]
    last = ((dataset.height - 1) // rows, (dataset.width - 1) // cols)
    for row, col in {(0, 0), last}:
        dataset.read(window=dataset.block_window(1, row, col))
    scale = max(dataset.width, dataset.height) / SAMPLE_PX
    shape = (dataset.height, dataset.width)
    if scale > 1:
        shape = (max(1, round(dataset.height / scale)), max(1, round(dataset.width / scale)))
    data = dataset.read(out_shape=(dataset.count, *shape), masked=True)
    mask = np.ma.getmaskarray(data)
    band = data[0].compressed()
    is_float = np.dtype(dataset.dtypes[0]).kind == "f"
    return ValueSample(
        pixels=shape[0] * shape[1],
        valid_pixels=int((~mask.all(axis=0)).sum()),
        distinct_values=None if is_float else int(np.unique(band).size),
        has_unmasked_nan=is_float and dataset.nodata is None and bool(np.isnan(data.data[~mask]).any()),
    )


def _describe_crs(crs: CRS | None) -> tuple[str | None, int | None]:
    if crs is None:
        return None, None
    authority = crs.to_authority()
    return (":".join(authority) if authority else crs.to_wkt()), crs.to_epsg()


def _bounds(dataset: DatasetReader) -> list[float]:
    # rasterio gives (left, bottom, right, top), which is not min/max when rows run south-up.
    left, bottom, right, top = dataset.bounds
    return [min(left, right), min(bottom, top), max(left, right), max(bottom, top)]


def _georeferencing_findings(dataset: DatasetReader) -> list[Finding]:
    found = []
    transform, gcps = dataset.transform, dataset.gcps[0]
    if dataset.crs is None:
        found.append(_finding("no_crs"))
    if transform.is_identity:
        found.append(_finding("gcps_only", count=len(gcps)) if gcps else _finding("no_geotransform"))
    elif transform.b or transform.d:
        found.append(_finding("rotated", b=transform.b, d=transform.d))
    elif transform.e > 0:
        found.append(_finding("south_up", e=transform.e))
    return found


def _bounds_4326(dataset: DatasetReader, bounds: list[float], findings: list[Finding]) -> list[float] | None:
    """Densified bounds in EPSG:4326; from the points on the Earth when corners are off it."""
    crs = dataset.crs
    if crs is None or dataset.transform.is_identity:
        return None
    if crs.is_geographic:
        slack = max(dataset.res)  # a global grid may reach half a pixel past the antimeridian
        west, south, east, north = bounds
        if not (
            -180 - slack <= west and east <= 180 + slack and -90 - slack <= south and north <= 90 + slack
        ):
            findings.append(_finding("absurd_bounds", bounds=bounds))
            return None
    try:
        found = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
    except RasterioError:
        found = (math.inf,) * 4
    if all(map(math.isfinite, found)):
        return list(found)
    approximate = _grid_bounds_4326(dataset)
    findings.append(_finding("bounds_4326_approximate" if approximate else "bounds_4326_unknown", grid=_GRID))
    return approximate


def _grid_bounds_4326(dataset: DatasetReader) -> list[float] | None:
    # pyproj, not rasterio.warp.transform: it marks each failed point with inf instead of raising.
    cols, rows = np.meshgrid(np.linspace(0, dataset.width, _GRID), np.linspace(0, dataset.height, _GRID))
    xs, ys = dataset.transform * (cols.ravel(), rows.ravel())
    to_4326 = Transformer.from_crs(dataset.crs.to_wkt(), "EPSG:4326", always_xy=True)
    lon, lat = (np.asarray(v) for v in to_4326.transform(xs, ys))
    ok = np.isfinite(lon) & np.isfinite(lat)
    if not ok.any():
        return None
    return [float(lon[ok].min()), float(lat[ok].min()), float(lon[ok].max()), float(lat[ok].max())]


def _value_findings(dataset: DatasetReader, kind: RasterKind, sample: ValueSample) -> list[Finding]:
    found = []
    nodata, dtype = dataset.nodata, dataset.dtypes[0]
    if nodata is not None and not in_dtype_range(nodata, dtype):
        found.append(_finding("nodata_out_of_range", nodata=nodata, dtype=dtype))
    if sample.valid_pixels == 0:
        found.append(_finding("all_nodata"))
    elif sample.has_unmasked_nan:
        found.append(_finding("nan_without_nodata"))
    elif kind == "continuous" and nodata is None and np.dtype(dtype).kind == "f":
        found.append(_finding("no_nodata", dtype=dtype))
    if sample.distinct_values == 1 and kind in ("continuous", "categorical"):
        found.append(_finding("constant"))
    return found


def _finding(code: str, **values: object) -> Finding:
    severity, template = FINDINGS[code]
    return Finding(severity=severity, code=code, message=template.format(**values))
