"""Where a raster lies on the Earth: its outline in EPSG:4326 for a STAC item, and its bbox.

The outline is the pixel grid's edge, densified and reprojected; it is split at the antimeridian,
grows to the pole for rasters that hold one, and for views whose corners are off the Earth
(geostationary) it is the convex hull of the pixels that are on it.
"""

from typing import Any

import numpy as np
import rasterio
import rasterio.crs
import shapely
import shapely.affinity
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.transform import from_gcps
from shapely.geometry import MultiPoint, Polygon, box, mapping
from shapely.geometry.polygon import orient

from rayetl.errors import PermanentError

__all__ = ["footprint", "georeference"]

# Points per edge when the outline is reprojected; GDAL's transform_bounds uses 21 too.
_EDGE_POINTS = 21
# Samples per side of the pixel grid when the outline leaves the Earth (geostationary views).
_GRID_POINTS = 257
# 1e-7 degrees is about 1 cm: finer digits only make the JSON longer.
_DECIMALS = 7


def georeference(src: rasterio.DatasetReader, name: str) -> tuple[rasterio.crs.CRS, Affine]:
    """The CRS and pixel → CRS transform, from the geotransform or else the ground control points."""
    if src.crs is not None:
        return src.crs, src.transform
    gcps, gcps_crs = src.gcps
    if gcps and gcps_crs is not None:
        return gcps_crs, from_gcps(gcps)
    raise PermanentError(
        f"{name}: the raster has no coordinate reference system, so no STAC item can place it; "
        "assign one (e.g. gdal_edit.py -a_srs EPSG:4326 FILE) and catalogue it again"
    )


def footprint(
    crs: rasterio.crs.CRS, transform: Affine, width: int, height: int, name: str
) -> tuple[dict[str, Any], list[float], bool]:
    """GeoJSON outline in EPSG:4326, its bbox, and whether it only approximates the raster.

    The outline is the pixel grid's edge, densified and reprojected. When it crosses the
    antimeridian it is split there and the bbox runs west > east, as the STAC spec asks. When
    part of the edge is off the Earth (geostationary views), the outline is the convex hull of a
    grid of pixels that are on it.
    """
    to_4326 = Transformer.from_crs(CRS.from_wkt(crs.to_wkt()), CRS.from_epsg(4326), always_xy=True)
    cols, rows = _edge(width, height)
    lon, lat = to_4326.transform(*(transform @ (cols, rows)))
    lon, lat = np.asarray(lon), np.asarray(lat)
    if np.isfinite(lon).all() and np.isfinite(lat).all():
        geometry = _outline(lon, lat)
        approximate = False
    else:
        geometry = _hull_on_earth(to_4326, transform, width, height, name)
        approximate = True
    geometry = shapely.set_precision(geometry, 10**-_DECIMALS)
    if geometry.is_empty or not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    return mapping(geometry), _bbox(geometry), approximate


def _edge(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates around the grid's edge, counter-clockwise in pixel space, closed."""
    steps = np.linspace(0.0, 1.0, _EDGE_POINTS)[:-1]
    cols = np.concatenate(
        [steps * width, np.full_like(steps, width), (1 - steps) * width, np.zeros_like(steps)]
    )
    rows = np.concatenate(
        [np.zeros_like(steps), steps * height, np.full_like(steps, height), (1 - steps) * height]
    )
    return np.append(cols, cols[0]), np.append(rows, rows[0])


def _outline(lon: np.ndarray, lat: np.ndarray) -> shapely.Geometry:
    lat = lat.clip(-90.0, 90.0)
    if np.abs(np.diff(lon)).max() <= 180.0:
        return orient(Polygon(zip(lon, lat, strict=True)).buffer(0))
    steps = np.diff(lon)
    winding = np.sum((steps + 180.0) % 360.0 - 180.0)
    if abs(winding) > 180.0:
        # The edge goes once around the globe: the raster holds a pole (polar stereographic).
        return box(-180.0, lat.min(), 180.0, 90.0) if lat.mean() > 0 else box(-180.0, -90.0, 180.0, lat.max())
    # The edge jumps from +180 to -180: unwrap it to 0..360, then cut at 180 and shift the part
    # east of it back, so each piece is a valid polygon in -180..180.
    unwrapped = Polygon(zip(np.where(lon < 0, lon + 360.0, lon), lat, strict=True)).buffer(0)
    west = unwrapped.intersection(box(-180.0, -90.0, 180.0, 90.0))
    east = shapely.affinity.translate(unwrapped.intersection(box(180.0, -90.0, 540.0, 90.0)), -360.0)
    parts = [orient(p) for g in (west, east) for p in getattr(g, "geoms", [g]) if p.area > 0]
    return shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]


def _hull_on_earth(
    to_4326: Transformer, transform: Affine, width: int, height: int, name: str
) -> shapely.Geometry:
    cols, rows = np.meshgrid(np.linspace(0, width, _GRID_POINTS), np.linspace(0, height, _GRID_POINTS))
    lon, lat = to_4326.transform(*(transform @ (cols.ravel(), rows.ravel())))
    lon, lat = np.asarray(lon), np.asarray(lat)
    on_earth = np.isfinite(lon) & np.isfinite(lat)
    if on_earth.sum() < 3:
        raise PermanentError(
            f"{name}: no part of the raster maps to a place on the Earth in its CRS, so no STAC item "
            "can place it; check its coordinate reference system and geotransform"
        )
    points = MultiPoint(np.column_stack([lon[on_earth], lat[on_earth].clip(-90.0, 90.0)]))
    return orient(points.convex_hull)


def _bbox(geometry: shapely.Geometry) -> list[float]:
    xmin, ymin, xmax, ymax = geometry.bounds
    parts = list(getattr(geometry, "geoms", []))
    if xmin <= -180.0 and xmax >= 180.0 and len(parts) > 1:
        # Split at the antimeridian: west edge is the easternmost part's west side, and so on.
        east_side = [p.bounds[0] for p in parts if p.bounds[0] > -180.0]
        west_side = [p.bounds[2] for p in parts if p.bounds[2] < 180.0]
        if east_side and west_side:
            xmin, xmax = min(east_side), max(west_side)
    return [round(v, _DECIMALS) for v in (xmin, ymin, xmax, ymax)]
