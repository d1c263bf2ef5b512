"""Columns of a source: names a PostgreSQL table can take, and the columns that hold geometry.

Geometry comes from CSV coordinate or WKT columns, from WKB (whose header tells its type and which
simple values can skip shapely), or from the column GeoParquet's 'geo' metadata names.
"""

import json
import re
import struct
import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from rayetl.errors import InvalidRequest

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_REPORTED_ROWS",
    "RESERVED_NAMES",
    "GeoParquetColumns",
    "clean_column_name",
    "clean_column_names",
    "geoparquet_columns",
    "multi_wkb",
    "multipoint_wkb",
    "plain_points",
    "point_wkb",
    "points_from_columns",
    "wkb_problem",
    "wkb_type_codes",
    "wkt_problems",
]

MAX_REPORTED_ROWS = 10  # rejected rows reported with their reason; the rest are only counted

MAX_NAME_BYTES = 63  # PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1)

# Names the loader uses itself (fid: primary key, geom: geometry), PostgreSQL's system columns
# (an error even when quoted) and its reserved key words (legal only when quoted, which every
# query would then need): https://www.postgresql.org/docs/current/sql-keywords-appendix.html
RESERVED_NAMES = frozenset(
    """
    fid geom ctid xmin xmax cmin cmax tableoid oid
    all analyse analyze and any array as asc asymmetric authorization binary both case cast check
    collate collation column concurrently constraint create cross current_catalog current_date
    current_role current_schema current_time current_timestamp current_user default deferrable desc
    distinct do else end except false fetch for foreign freeze from full grant group having ilike in
    initially inner intersect into is isnull join lateral leading left like limit localtime
    localtimestamp natural not notnull null offset on only or order outer overlaps placing primary
    references returning right select session_user similar some symmetric system_user table
    tablesample then to trailing true union unique user using variadic verbose when where window with
    """.split()
)

_KEPT_CATEGORIES = ("L", "M", "N")  # letters, combining marks (vowel signs, accents), digits


def _safe_characters(text: str) -> str:
    """Runs of anything but letters, marks, digits and '_' as one '_'.

    Kept in every script: PostgreSQL takes non-ASCII identifiers, and transliterating would lose
    information. Marks count too, or 'नाम' (its vowel sign is a mark, not a letter) would break up.
    """
    kept = [c if c == "_" or unicodedata.category(c)[0] in _KEPT_CATEGORIES else "_" for c in text]
    return re.sub("_+", "_", "".join(kept))


def clean_column_name(name: str, position: int) -> str:
    """One name cleaned: NFC, lower case, [letters digits _], no leading digit, ≤63 bytes, not reserved.

    position (0-based) names a column whose name has nothing usable left (`column_3`).
    """
    # Lower first: lower() may decompose (İ → i + combining dot), and NFC puts it back together.
    text = unicodedata.normalize("NFC", str(name).lower())
    text = _safe_characters(text).strip("_")
    if not text:
        text = f"column_{position + 1}"
    if not unicodedata.category(text[0]).startswith("L"):  # a digit or a mark cannot lead
        text = f"col_{text}"
    text = _fit(text, "")
    if text in RESERVED_NAMES:
        text = f"{text}_"
    return text


def clean_column_names(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Clean every name and make them unique: the new names, and {old: new} for those renamed.

    The first column keeps a cleaned name; a later one that cleans to the same name gets `_2`,
    `_3`, … (never a name another column cleans to), so every chunk of a file gets the same names.
    """
    cleaned = [clean_column_name(name, i) for i, name in enumerate(names)]
    natural = set(cleaned)
    taken: set[str] = set()
    result: list[str | None] = []
    for name in cleaned:
        result.append(None if name in taken else name)
        taken.add(name)
    for i, name in enumerate(result):
        if name is not None:
            continue
        suffix = 2
        while (candidate := _fit(cleaned[i], f"_{suffix}")) in taken or candidate in natural:
            suffix += 1
        taken.add(candidate)
        result[i] = candidate
    new_names = [str(name) for name in result]
    renamed = {old: new for old, new in zip(names, new_names, strict=True) if old != new}
    return new_names, renamed


def _fit(base: str, suffix: str) -> str:
    """base + suffix in at most MAX_NAME_BYTES of UTF-8, cutting base between characters."""
    room = MAX_NAME_BYTES - len(suffix.encode())
    head = base.encode()[:room].decode("utf-8", errors="ignore").rstrip("_")
    return head + suffix


def points_from_columns(
    lat: pa.ChunkedArray, lon: pa.ChunkedArray, *, geographic: bool
) -> tuple[pa.Array, np.ndarray, tuple[str, ...]]:
    """WKB points from latitude/longitude columns, the positions of unusable rows, and why (first few).

    A row with both coordinates empty has no geometry (it counts as a null geometry later); one
    coordinate empty, text that is not a number, or (in a geographic CRS) a value out of range
    makes the row invalid.
    """
    (lat_values, lat_bad), (lon_values, lon_bad) = _numbers(lat), _numbers(lon)
    lat_missing, lon_missing = np.isnan(lat_values) & ~lat_bad, np.isnan(lon_values) & ~lon_bad
    with np.errstate(invalid="ignore"):
        problem = (
            lat_bad | lon_bad | (lat_missing != lon_missing) | np.isinf(lat_values) | np.isinf(lon_values)
        )
        if geographic:
            problem |= (np.abs(lat_values) > 90) | (np.abs(lon_values) > 180)
    invalid = np.flatnonzero(problem)
    reasons = tuple(
        _coordinate_problem(lat[int(i)].as_py(), lon[int(i)].as_py(), geographic=geographic)
        for i in invalid[:MAX_REPORTED_ROWS]
    )
    has_point = ~problem & ~lat_missing & ~lon_missing
    return point_wkb(lon_values, lat_values, valid=has_point), invalid, reasons


def _numbers(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """float64 values (NaN where missing or not a number), and which values are not numbers."""
    array = column.combine_chunks()
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
        return array.cast(pa.float64()).fill_null(np.nan).to_numpy(), np.zeros(len(array), dtype=bool)
    # GDAL typed the column as text: some value in the file is not a number.
    values = pd.to_numeric(array.cast(pa.string()).to_pandas(), errors="coerce").to_numpy(np.float64)
    return values, array.is_valid().to_numpy(zero_copy_only=False) & np.isnan(values)


def _coordinate_problem(lat, lon, *, geographic: bool) -> str:
    """Why a row's coordinates (as read: numbers, text or None) make no point."""
    for name, value in (("latitude", lat), ("longitude", lon)):
        if value is None:
            return f"{name} is empty"
        number = float(pd.to_numeric(value, errors="coerce"))
        if np.isnan(number):
            return f"{name} {value!r} is not a number"
        if np.isinf(number):
            return f"{name} {value!r} is not finite"
    lat, lon = float(pd.to_numeric(lat)), float(pd.to_numeric(lon))
    if geographic and abs(lat) > 90:
        swapped = " (are lat_name and lon_name swapped?)" if abs(lon) <= 90 else ""
        return f"latitude {lat!r} is outside [-90, 90]{swapped}"
    return f"longitude {lon!r} is outside [-180, 180]"


def wkt_problems(text: pa.ChunkedArray, geometry: pa.Array) -> tuple[np.ndarray, tuple[str, ...]]:
    """Rows whose WKT GDAL could not parse (text but no geometry), and why (for the first few)."""
    text = text.combine_chunks()
    has_text = text.is_valid().to_numpy(zero_copy_only=False)
    invalid = np.flatnonzero(has_text & geometry.is_null().to_numpy(zero_copy_only=False))
    return invalid, tuple(_wkt_problem(text[int(i)].as_py()) for i in invalid[:MAX_REPORTED_ROWS])


def _wkt_problem(text: str) -> str:
    shown = text if len(text) <= 60 else text[:57] + "..."
    try:
        shapely.from_wkt(text)
    except shapely.errors.ShapelyError as exc:
        return f"unparsable WKT {shown!r}: {exc}"
    return f"unparsable WKT {shown!r}"


def wkb_type_codes(wkb: pa.Array) -> np.ndarray:
    """The type code in each WKB header (ISO: base + 1000 * dimensions); 0 for null or short values."""
    return _wkb_headers(wkb)[1] & 0x0FFFFFFF  # EWKB's Z/M/SRID flags off


def _wkb_headers(wkb: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Byte order and raw type code of each WKB value (1 and 0 for null or short values)."""
    head = pc.if_else(pc.greater_equal(pc.binary_length(wkb), 5), pc.binary_slice(wkb, 0, 5), None)
    fixed = pc.fill_null(head, b"\x01\x00\x00\x00\x00").cast(pa.binary(5))
    data = np.frombuffer(fixed.buffers()[1], np.uint8)
    header = data[fixed.offset * 5 : (fixed.offset + len(fixed)) * 5].reshape(-1, 5)
    code = np.ascontiguousarray(header[:, 1:5])
    little, big = code.view("<u4").ravel(), code.view(">u4").ravel()
    return header[:, 0], np.where(header[:, 0] == 1, little, big).astype(np.int64)


@dataclass(frozen=True)
class GeoParquetColumns:
    """What a GeoParquet file's 'geo' metadata says about its columns."""

    geometry: str
    crs: str | None  # PROJJSON text, "OGC:CRS84", or None when unknown
    declared_type: str | None  # "MultiPolygon" when every listed type is of one family
    not_attributes: frozenset[str]  # geometry, bbox covering and pandas index columns


def geoparquet_columns(schema: pa.Schema, source: str) -> GeoParquetColumns:
    """Read the primary geometry column and its CRS from a GeoParquet schema; InvalidRequest if unusable."""
    metadata = schema.metadata or {}
    if b"geo" not in metadata:
        raise InvalidRequest(
            f"{source}: a Parquet file without GeoParquet 'geo' metadata; write it as GeoParquet "
            "(e.g. GeoDataFrame.to_parquet)"
        )
    geo = json.loads(metadata[b"geo"])
    column = geo["primary_column"]
    spec = geo["columns"][column]
    if spec.get("encoding", "WKB").upper() != "WKB":
        raise InvalidRequest(
            f"{source}: geometry column {column!r} is encoded as {spec['encoding']!r}; rayetl reads "
            "WKB GeoParquet: re-write it with geometry_encoding='WKB'"
        )
    # GeoParquet: a missing "crs" means OGC:CRS84; an explicit null means unknown.
    crs = "OGC:CRS84" if "crs" not in spec else None if spec["crs"] is None else json.dumps(spec["crs"])
    families = {kind.removesuffix(" Z").removeprefix("Multi") for kind in spec.get("geometry_types", [])}
    covering = {path[0] for box in spec.get("covering", {}).values() for path in box.values()}
    index = json.loads(metadata.get(b"pandas", b"{}")).get("index_columns", [])
    return GeoParquetColumns(
        geometry=column,
        crs=crs,
        declared_type=f"Multi{families.pop()}" if len(families) == 1 else None,
        not_attributes=frozenset({column, *covering, *(name for name in index if isinstance(name, str))}),
    )


# 2D little-endian WKB: a Point is 21 bytes, a one-point MultiPoint 30 (numpy packs these records).
_POINT_WKB = np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")])
_MULTIPOINT_WKB = np.dtype([("order", "u1"), ("type", "<u4"), ("count", "<u4"), ("point", _POINT_WKB)])
_MULTI_TYPE_ID = {"Point": 4, "LineString": 5, "Polygon": 6}
_SINGLE_TYPE_ID = {"Point": 0, "LineString": 1, "Polygon": 3}  # shapely type ids
_WKB_CODE_OF = np.array([1, 2, 2, 3, 4, 5, 6, 7])  # by shapely type id (LinearRing, 2, is not in WKB)


def plain_points(wkb: pa.Array) -> np.ndarray | None:
    """The (x, y) records of WKB holding only 2D little-endian points and no nulls; else None.

    Such a column (CSV coordinates, most point layers) skips shapely entirely: parsing and writing
    1M points as shapely objects costs over a second, reading them as records a few milliseconds.
    """
    if wkb.null_count or not len(wkb):
        return None
    wkb = wkb.cast(pa.binary())
    offsets = np.frombuffer(wkb.buffers()[1], np.int32)[wkb.offset : wkb.offset + len(wkb) + 1]
    if (np.diff(offsets) != _POINT_WKB.itemsize).any():
        return None
    records = np.frombuffer(wkb.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].view(_POINT_WKB)
    if ((records["order"] != 1) | (records["type"] != 1)).any():
        return None
    return records


def point_wkb(x: np.ndarray, y: np.ndarray, *, valid: np.ndarray | None = None) -> pa.Array:
    """Point WKB for each (x, y), built as records without shapely; null where valid is False."""
    out = np.empty(len(x), _POINT_WKB)
    out["order"], out["type"], out["x"], out["y"] = 1, 1, x, y
    return _binary(out, valid)


def multipoint_wkb(x: np.ndarray, y: np.ndarray) -> pa.Array:
    """One-point MultiPoint WKB for each (x, y), built as records without shapely."""
    out = np.empty(len(x), _MULTIPOINT_WKB)
    out["order"], out["type"], out["count"] = 1, 4, 1
    out["point"]["order"], out["point"]["type"] = 1, 1
    out["point"]["x"], out["point"]["y"] = x, y
    return _binary(out, None)


def _binary(records: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """A binary array whose values are the fixed-size records (their slots stay under nulls too)."""
    offsets = np.arange(len(records) + 1, dtype=np.int32) * records.dtype.itemsize
    validity = None if valid is None or valid.all() else pa.array(valid).buffers()[1]
    buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(records.view(np.uint8))]
    return pa.Array.from_buffers(pa.binary(), len(records), buffers)


def multi_wkb(geoms: np.ndarray, family: str, *, source: pa.Array | None = None) -> pa.Array:
    """2D little-endian ISO WKB of geometries of one family, single ones wrapped as one-part Multi*.

    source: the geometries' WKB as read, reused when it already is 2D little-endian ISO WKB of these
    very geometries (encoding 100k polygons again costs ~0.2 s). Wrapping prepends a Multi header
    to a single geometry's WKB, which is cheaper than building Multi geometries with shapely.
    """
    type_ids = shapely.get_type_id(geoms)
    wkb = source
    if wkb is None or not _is_plain_wkb(wkb, type_ids):
        wkb = pa.array(shapely.to_wkb(geoms, output_dimension=2, byte_order=1, flavor="iso"), pa.binary())
    single = type_ids == _SINGLE_TYPE_ID[family]
    if not single.any():
        return wkb.cast(pa.binary())
    header = pa.scalar(b"\x01" + struct.pack("<II", _MULTI_TYPE_ID[family], 1), pa.binary())
    wrapped = pc.binary_join_element_wise(header, wkb.cast(pa.binary()), pa.scalar(b"", pa.binary()))
    return pc.if_else(pa.array(single), wrapped, wkb.cast(pa.binary()))


def _is_plain_wkb(wkb: pa.Array, type_ids: np.ndarray) -> bool:
    order, code = _wkb_headers(wkb)
    return bool((order == 1).all() and (code == _WKB_CODE_OF[type_ids]).all())


_UNSUPPORTED_WKB = {15: "PolyhedralSurface", 16: "TIN", 17: "Triangle"}


def wkb_problem(wkb: bytes) -> str:
    """Why shapely cannot read a WKB value."""
    kind = _UNSUPPORTED_WKB.get(int(wkb_type_codes(pa.array([wkb], pa.binary()))[0]) % 1000)
    if kind:
        return (
            f"{kind} geometries are not supported; convert them to polygons (e.g. ogr2ogr -nlt MULTIPOLYGON)"
        )
    try:
        shapely.from_wkb(wkb)
    except shapely.errors.ShapelyError as exc:
        return f"unreadable geometry: {exc}"
    return "unreadable geometry"
