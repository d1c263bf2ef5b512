"""Prepare one batch for loading: clean geometries of one Multi* type in EPSG:4326 as WKB, clean names.

The prepared chunk is a pyarrow.Table (attributes with their source types, then `geom` as WKB), so
it moves through Ray's object store without copies and COPY encodes it without shapely objects.
What was done to it is told by its ChunkSummary (vector_summary.py).
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import pyarrow as pa
import shapely
from pydantic import Field
from pyproj import CRS, Transformer

from rayetl.errors import PermanentError
from rayetl.pipelines.contract import JobParams
from rayetl.pipelines.vector_columns import (
    MAX_REPORTED_ROWS,
    clean_column_names,
    multi_wkb,
    multipoint_wkb,
    plain_points,
    wkb_problem,
)
from rayetl.pipelines.vector_families import (
    as_multi,
    family_of,
    flat_parts,
    is_collection,
    parts_of_family,
    row_families,
    type_counts,
)
from rayetl.pipelines.vector_formats import RawBatch, parse_crs
from rayetl.pipelines.vector_summary import ChunkSummary, RejectedRow, rejected_message

__all__ = ["GeometryParams", "PreparedChunk", "prepare_batch"]

_WGS84 = CRS.from_epsg(4326)
_SLACK_DEG = 1e-6  # reprojection round-off at the edges of EPSG:4326 is not an error


class _Reprojection(NamedTuple):
    crs_name: str  # for messages, e.g. "EPSG:2263"
    transformer: Transformer | None  # None when the source already is EPSG:4326


class GeometryParams(JobParams):
    """Optional simplification and coordinate precision, in EPSG:4326 degrees."""

    simplify_tolerance: float | None = Field(
        None, gt=0, description="Simplify with this tolerance in degrees, keeping topology."
    )
    precision: float | None = Field(
        None, gt=0, description="Snap coordinates to a grid of this size in degrees (1e-6 is about 11 cm)."
    )


@dataclass(frozen=True)
class PreparedChunk:
    """A load-ready table (attribute columns, then `geom` WKB), its rows' places in the source, a summary.

    fids: each row's 1-based position in the source (int64), which becomes its fid: the same
    feature gets the same fid in every load of the file, whatever order the chunks are copied in.
    """

    table: pa.Table
    fids: pa.Array
    summary: ChunkSummary


def prepare_batch(
    batch: RawBatch,
    *,
    target_type: str | None = None,
    source_crs: str | None = None,
    geometry_params: GeometryParams | None = None,
    on_invalid: Literal["fail", "skip"] = "fail",
) -> PreparedChunk:
    """Drop null/empty geometries, repair invalid ones, drop Z/M, reproject, promote to Multi*, WKB.

    target_type: the geometry type of earlier chunks of the same table (e.g. "MultiPolygon").
    Raises PermanentError for a batch that cannot go into one table (mixed geometry families, no
    CRS) and, with on_invalid="fail", for rows that cannot be loaded, naming the first of them.
    """
    params = geometry_params or GeometryParams()
    work = _Work(batch)
    wkb = work.drop_null()
    points = plain_points(wkb) if _may_be_points(batch, target_type, params) else None
    if points is not None:
        family, geometry = "Point", _prepare_points(work, points, _reprojection(batch, source_crs))
    else:
        family, geometry = _prepare_geometries(work, target_type, source_crs, params)
    summary = work.summary(family, geometry)
    if summary.rejected and on_invalid == "fail":
        raise PermanentError(rejected_message(batch.source, summary))
    names, renamed = clean_column_names(batch.attributes.column_names)
    table = batch.attributes.filter(pa.array(work.keep)).rename_columns(names)
    table = table.append_column(pa.field("geom", pa.binary()), geometry)
    fids = pa.array(batch.rows[work.keep], pa.int64())
    return PreparedChunk(table, fids, summary.model_copy(update={"renamed": renamed}))


def _prepare_geometries(
    work: "_Work", target_type: str | None, source_crs: str | None, params: GeometryParams
) -> tuple[str | None, pa.Array]:
    work.parse()
    family = _table_family(work, target_type)
    if family is None:  # no geometry left
        return None, pa.array([], pa.binary())
    _conform(work, family)
    _repair(work, family)
    _to_wgs84(work, _reprojection(work.batch, source_crs))
    _simplify(work, params)
    source = None if work.modified else work.batch.geometry.filter(pa.array(work.keep))
    return family, multi_wkb(work.geoms[work.keep], family, source=source)


class _Work:
    """A batch on its way: shapely geometries, which rows are kept, and what happened to the others."""

    def __init__(self, batch: RawBatch):
        self.batch = batch
        self.keep = np.ones(len(batch), dtype=bool)
        self.geoms = np.full(len(batch), None, dtype=object)
        self.bbox: list[float] | None = None
        self.modified = False  # whether any geometry differs from its WKB as read
        self.counts = {"dropped_null": 0, "dropped_empty": 0, "repaired": 0}
        self._rejected: list[np.ndarray] = []
        self._reasons: dict[int, str] = {}
        reasons = dict(zip(batch.invalid[:MAX_REPORTED_ROWS].tolist(), batch.reasons, strict=False))
        self.reject(batch.invalid, reasons.__getitem__)

    def reject(self, positions: np.ndarray, reason: Callable[[int], str]) -> None:
        """Leave rows out as rejected; reasons are built only for the first few."""
        positions = np.asarray(positions, dtype=np.int64)
        self.keep[positions] = False
        self._rejected.append(positions)
        for i in positions[:MAX_REPORTED_ROWS].tolist():
            self._reasons[i] = reason(i)

    def drop(self, positions: np.ndarray, count: str) -> None:
        """Leave rows out, counted under `count` (e.g. dropped_empty)."""
        self.keep[positions] = False
        self.counts[count] += len(positions)

    def kept(self) -> np.ndarray:
        """Positions of the rows still kept."""
        return np.flatnonzero(self.keep)

    def drop_null(self) -> pa.Array:
        """Drop rows without a geometry (counted); the WKB of the rows kept."""
        null = self.batch.geometry.is_null().to_numpy(zero_copy_only=False)
        self.drop(np.flatnonzero(null & self.keep), "dropped_null")
        return self.batch.geometry.filter(pa.array(self.keep))

    def parse(self) -> None:
        """Shapely geometries of the kept rows, 2D; unreadable WKB is rejected, empty dropped."""
        kept, wkb = self.kept(), self.batch.geometry
        self.geoms[kept] = shapely.from_wkb(
            wkb.take(kept).to_numpy(zero_copy_only=False), on_invalid="ignore"
        )
        self.reject(kept[self.geoms[kept] == None], lambda i: wkb_problem(wkb[i].as_py()))  # noqa: E711
        kept = self.kept()
        self.drop(kept[shapely.is_empty(self.geoms[kept])], "dropped_empty")
        kept = self.kept()
        if shapely.has_z(self.geoms[kept]).any() or shapely.has_m(self.geoms[kept]).any():
            self.geoms[kept] = shapely.force_2d(self.geoms[kept])
            self.modified = True

    def summary(self, family: str | None, geometry: pa.Array) -> ChunkSummary:
        """Counts, type and extent of what is kept."""
        rejected = np.sort(np.concatenate(self._rejected)) if self._rejected else np.empty(0, np.int64)
        first = [
            RejectedRow(row=int(self.batch.rows[i]), reason=self._reasons[i])
            for i in rejected[:MAX_REPORTED_ROWS].tolist()
        ]
        if self.bbox is None and len(geometry):
            self.bbox = [float(v) for v in shapely.total_bounds(self.geoms[self.keep])]
        return ChunkSummary(
            rows_in=len(self.batch),
            rows_out=len(geometry),
            rejected=len(rejected),
            rejected_rows=first,
            geometry_type=f"Multi{family}" if family and len(geometry) else None,
            bbox=self.bbox if len(geometry) else None,
            **self.counts,
        )


# -- points, without shapely -----------------------------------------------------------------------


def _may_be_points(batch: RawBatch, target_type: str | None, params: GeometryParams) -> bool:
    # Snapping is left to shapely (GEOS rounds differently from numpy); simplifying a point is a no-op.
    family = family_of(batch.declared_type) or family_of(target_type)
    return family in (None, "Point") and params.precision is None


def _prepare_points(work: "_Work", points: np.ndarray, reprojection: _Reprojection) -> pa.Array:
    """Points read as (x, y) records: empties dropped, reprojected, range-checked, as MultiPoint WKB."""
    kept = work.kept()
    x, y = points["x"], points["y"]
    empty = np.isnan(x) | np.isnan(y)  # WKB writes POINT EMPTY as (NaN, NaN)
    work.drop(kept[empty], "dropped_empty")
    kept, x, y = kept[~empty], x[~empty], y[~empty]
    if reprojection.transformer is not None:
        x, y = reprojection.transformer.transform(x, y)
    bounds = np.column_stack([x, y, x, y])
    inside = _inside_wgs84(bounds)
    _reject_outside(work, kept[~inside], bounds[~inside], reprojection.crs_name)
    x, y = x[inside], y[inside]
    if len(x):
        work.bbox = [float(x.min()), float(y.min()), float(x.max()), float(y.max())]
    return multipoint_wkb(x, y)


# -- geometry families -----------------------------------------------------------------------------


def _table_family(work: "_Work", target_type: str | None) -> str | None:
    """The family of the table: declared by the layer, set by earlier chunks, or found in the data.

    Rows of another family are rejected (later) when the layer declares its type: they break the
    file's own contract. Otherwise a batch that mixes families fails, with the counts per type.
    """
    kept = work.kept()
    families = row_families(work.geoms[kept])
    mixed = kept[families == None]  # noqa: E711
    work.reject(mixed, lambda i: f"a GeometryCollection of {type_counts(flat_parts(work.geoms[i]))}")
    found = set(families[families != None].tolist())  # noqa: E711
    declared, target = family_of(work.batch.declared_type), family_of(target_type)
    if declared and target and declared != target:
        raise PermanentError(
            f"{work.batch.source}: the layer declares {work.batch.declared_type} geometries but earlier "
            f"chunks held {target_type}; a table holds one geometry family"
        )
    if declared or not found - {target}:
        return declared or target or (found.pop() if found else None)
    earlier = f"; earlier chunks held {target_type}" if target else ""
    rows = work.batch.rows
    if len(found) > 1 or target:
        raise PermanentError(
            f"{work.batch.source} mixes geometry families (rows {rows[0]}-{rows[-1]}: "
            f"{type_counts(work.geoms[work.keep])}){earlier}. "
            "A table holds one family (points, lines or polygons): split the file by geometry type "
            "(e.g. ogr2ogr -where \"OGR_GEOMETRY='Polygon'\") and load each part"
        )
    return found.pop()


def _conform(work: "_Work", family: str) -> None:
    """Reject rows of another family; collections of the family's parts become Multi geometries."""
    kept = work.kept()
    other = kept[row_families(work.geoms[kept]) != family]
    layer = work.batch.declared_type or family
    work.reject(other, lambda i: f"a {work.geoms[i].geom_type} in a layer of {layer} geometries")
    kept = work.kept()
    for i in kept[is_collection(work.geoms[kept])].tolist():
        work.geoms[i] = as_multi(flat_parts(work.geoms[i]), family)
        work.modified = True


# -- repair, reprojection, simplification ----------------------------------------------------------


def _repair(work: "_Work", family: str) -> None:
    """make_valid the invalid geometries; one that does not stay in the family is rejected."""
    kept = work.kept()
    invalid = kept[~shapely.is_valid(work.geoms[kept])]
    if not len(invalid):
        return
    before = dict(zip(invalid.tolist(), work.geoms[invalid], strict=True))
    fixed = np.array([_repaired_into(g, family) for g in _make_valid(work.geoms[invalid])], dtype=object)
    failed = fixed == None  # noqa: E711
    work.geoms[invalid[~failed]] = fixed[~failed]
    work.counts["repaired"] = int((~failed).sum())
    work.modified = True
    work.reject(
        invalid[failed],
        lambda i: (
            f"invalid {before[i].geom_type} ({shapely.is_valid_reason(before[i])}) "
            f"cannot be repaired into a {family}"
        ),
    )


def _make_valid(geoms: np.ndarray) -> np.ndarray:
    # "structure" keeps polygons polygons (like PostGIS ST_MakeValid method=structure) and drops
    # collapsed parts instead of turning them into lines or points of another family.
    try:
        return shapely.make_valid(geoms, method="structure", keep_collapsed=False)
    except shapely.errors.GEOSException:
        return np.array([_make_valid_one(g) for g in geoms], dtype=object)


def _make_valid_one(geometry):
    try:
        return shapely.make_valid(geometry, method="structure", keep_collapsed=False)
    except shapely.errors.GEOSException:
        return None  # GEOS cannot repair it: the row is rejected


def _repaired_into(geometry, family: str):
    if geometry is None or geometry.is_empty:
        return None
    parts = parts_of_family(geometry, family)
    if not len(parts):
        return None
    return parts[0] if len(parts) == 1 else as_multi(parts, family)


def _reprojection(batch: RawBatch, source_crs: str | None) -> _Reprojection:
    crs = batch.crs or source_crs
    if crs is None:
        raise PermanentError(
            f"{batch.source}: no CRS and no source_crs: the file does not say which CRS its coordinates "
            "are in; set source_crs (or converter_params.crs for a CSV), e.g. 'EPSG:4326'"
        )
    try:
        return _reprojection_from(crs)
    except ValueError as exc:
        raise PermanentError(f"{batch.source}: {exc}") from exc


@functools.lru_cache(maxsize=32)
def _reprojection_from(crs_text: str) -> _Reprojection:
    # Cached: parsing a PROJJSON CRS and building a transformer take ~30 ms, per batch otherwise.
    crs = parse_crs(crs_text, "the source CRS")
    if crs.equals(_WGS84, ignore_axis_order=True):
        return _Reprojection(crs.to_string(), None)
    return _Reprojection(crs.to_string(), Transformer.from_crs(crs, _WGS84, always_xy=True))


def _to_wgs84(work: "_Work", reprojection: _Reprojection) -> None:
    """Reproject to EPSG:4326; rows whose coordinates then fall outside its range are rejected."""
    transformer = reprojection.transformer
    kept = work.kept()
    if transformer is not None:
        work.geoms[kept] = shapely.transform(work.geoms[kept], transformer.transform, interleaved=False)
        work.modified = True
    bounds = shapely.bounds(work.geoms[kept])
    inside = _inside_wgs84(bounds)
    _reject_outside(work, kept[~inside], bounds[~inside], reprojection.crs_name)


def _inside_wgs84(bounds: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(bounds).all(axis=1)
        inside &= (bounds[:, 0] >= -180 - _SLACK_DEG) & (bounds[:, 2] <= 180 + _SLACK_DEG)
        return inside & (bounds[:, 1] >= -90 - _SLACK_DEG) & (bounds[:, 3] <= 90 + _SLACK_DEG)


def _reject_outside(work: "_Work", positions: np.ndarray, bounds: np.ndarray, name: str) -> None:
    shown = {
        int(i): ", ".join(f"{v:.6g}" for v in b)
        for i, b in zip(positions[:MAX_REPORTED_ROWS], bounds, strict=False)
    }
    work.reject(
        positions,
        lambda i: (
            f"coordinates [{shown[i]}] are outside EPSG:4326 once reprojected from {name}: is "
            f"{name} really the CRS of this file? (set source_crs for a file without one)"
        ),
    )


def _simplify(work: "_Work", params: GeometryParams) -> None:
    """Apply the optional simplification and precision; a geometry reduced to nothing is rejected."""
    if params.simplify_tolerance is None and params.precision is None:
        return
    kept = work.kept()
    geoms = work.geoms[kept]
    if params.simplify_tolerance is not None:
        geoms = shapely.simplify(geoms, params.simplify_tolerance, preserve_topology=True)
    if params.precision is not None:
        geoms = shapely.set_precision(geoms, params.precision)
    work.geoms[kept] = geoms
    work.modified = True
    work.reject(
        kept[shapely.is_empty(geoms)],
        lambda i: (
            f"nothing is left once simplified/snapped (simplify_tolerance={params.simplify_tolerance}, "
            f"precision={params.precision}); use smaller values"
        ),
    )
