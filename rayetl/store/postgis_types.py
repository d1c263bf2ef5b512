"""Chunks as PostgreSQL sees them: dtypes → column types, and columns → binary COPY rows."""

import struct
from collections.abc import Iterator, Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from rayetl.errors import PermanentError

__all__ = [
    "COPY_HEADER",
    "COPY_TRAILER",
    "MAX_NAME_BYTES",
    "SRID",
    "arrays_for_copy",
    "binary_copy_rows",
    "cast_for_copy",
    "column_types",
    "pg_type_of",
    "to_arrow",
]

SRID = 4326
MAX_NAME_BYTES = 63  # PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1)
RESERVED_COLUMNS = ("fid", "geom")
_GEOMETRY_KINDS = ("Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon")

# Signature, flags (no OIDs), no header extension; the trailer is a field count of -1.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)

_PG_EPOCH_DAYS = 10_957  # PostgreSQL counts dates and times from 2000-01-01, Arrow from 1970-01-01
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400 * 1_000_000

# The Arrow type each PostgreSQL type (as format_type() spells it) is cast to before encoding.
_ARROW_OF = {
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double precision": pa.float64(),
    "boolean": pa.bool_(),
    "text": pa.large_string(),
    "bytea": pa.large_binary(),
    "date": pa.date32(),
    "timestamp without time zone": pa.timestamp("us"),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
}
# Fixed-width values: the big-endian numpy type of the value on the wire, and its epoch offset.
_WIRE = {
    pa.int16(): (">i2", 0),
    pa.int32(): (">i4", 0),
    pa.int64(): (">i8", 0),
    pa.float32(): (">f4", 0),
    pa.float64(): (">f8", 0),
    pa.bool_(): ("u1", 0),
    pa.date32(): (">i4", _PG_EPOCH_DAYS),
    pa.timestamp("us"): (">i8", _PG_EPOCH_US),
    pa.timestamp("us", tz="UTC"): (">i8", _PG_EPOCH_US),
}
_NULL_FIELD = pa.scalar(struct.pack(">i", -1), pa.large_binary())  # a field of length -1 is NULL
_NO_SEPARATOR = pa.scalar(b"", pa.large_binary())


def column_types(frame: gpd.GeoDataFrame) -> dict[str, str]:
    """PostgreSQL types of the frame's columns, its active geometry last as `geom`."""
    geometry = _geometry_of(frame, "the first chunk")
    types = {}
    for name in frame.columns:
        if name == geometry.name:
            continue
        _check_column_name(name, frame[name])
        types[name] = pg_type_of(to_arrow(frame[name], name), name)
    kinds = set(geometry.geom_type.dropna().unique())
    if len(kinds) > 1 or not kinds <= set(_GEOMETRY_KINDS):
        raise PermanentError(
            f"the geometry column holds {', '.join(sorted(kinds))}; "
            "promote every geometry to one simple type (e.g. MultiPolygon) before loading"
        )
    kind = kinds.pop() if kinds else "Geometry"  # only missing geometries: any type goes
    types["geom"] = f"geometry({kind}{'Z' if geometry.has_z.any() else ''},{SRID})"
    return types


def _check_column_name(name: object, values: pd.Series) -> None:
    if not isinstance(name, str) or not name:
        raise PermanentError(f"column {name!r}: column names must be non-empty strings")
    if name in RESERVED_COLUMNS:
        raise PermanentError(
            f"column {name!r} is reserved (fid is the primary key, geom the geometry); "
            f"rename it, e.g. to 'source_{name}'"
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise PermanentError(f"column {name!r} is longer than {MAX_NAME_BYTES} bytes; shorten it")
    if isinstance(values.dtype, gpd.array.GeometryDtype):
        raise PermanentError(
            f"column {name!r} is a second geometry column; keep one, or convert it to WKT text"
        )


def _geometry_of(frame: gpd.GeoDataFrame, where: str) -> gpd.GeoSeries:
    if getattr(frame, "active_geometry_name", None) is None:
        raise PermanentError(f"{where} has no geometry column; pass a GeoDataFrame with one set")
    if not frame.columns.is_unique:
        raise PermanentError(
            f"{where}: column names repeat: {sorted(frame.columns[frame.columns.duplicated()])}"
        )
    if frame.crs is None or frame.crs.to_epsg() != SRID:
        raise PermanentError(
            f"{where}: geometries are in {frame.crs or 'no CRS'}; reproject them to EPSG:4326"
        )
    return frame.geometry


def arrays_for_copy(frame: gpd.GeoDataFrame, columns: dict[str, str], where: str) -> list[pa.Array]:
    """The chunk's columns in table order, cast to the table's types; geometry as WKB."""
    geometry = _geometry_of(frame, where)
    have = {str(name) for name in frame.columns if name != geometry.name} | {"geom"}
    if have != set(columns):
        raise PermanentError(
            f"{where}: columns differ from the staging table's (missing: "
            f"{', '.join(sorted(set(columns) - have)) or 'none'}; unexpected: "
            f"{', '.join(sorted(have - set(columns))) or 'none'}); every chunk needs the first one's columns"
        )
    arrays = []
    for name, pg_type in columns.items():
        if name == "geom":
            # Plain WKB: PostGIS gives SRID-less geometries the column's SRID (postgis_valid_typmod),
            # which saves a set_srid copy of every geometry.
            wkb = shapely.to_wkb(np.asarray(geometry.array))
            arrays.append(pa.array(wkb, type=pa.large_binary()))
        else:
            arrays.append(cast_for_copy(to_arrow(frame[name], name), name, pg_type))
    return arrays


def to_arrow(values: pd.Series, column: str) -> pa.Array:
    """The column as one Arrow array; pandas' missing values (None, NaN, NaT, NA) become nulls."""
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PermanentError(
            f"column {column!r} mixes value types ({exc}); give it one type (e.g. cast it to str)"
        ) from exc
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):  # categoricals are stored as their values
        array = array.dictionary_decode()
    return array


def pg_type_of(array: pa.Array, column: str) -> str:
    """The PostgreSQL type that holds every value of an Arrow array exactly."""
    t = array.type
    if pa.types.is_null(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"  # an all-missing column has no type of its own; text takes anything later
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        # Unsigned types need the next wider signed type; uint64 beyond 2**63-1 fails the cast.
        bits = t.bit_width * 2 if pa.types.is_unsigned_integer(t) else t.bit_width
        return "smallint" if bits <= 16 else "integer" if bits <= 32 else "bigint"
    if pa.types.is_floating(t):
        return "double precision" if t.bit_width == 64 else "real"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "bytea"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp with time zone" if t.tz else "timestamp without time zone"
    raise PermanentError(
        f"column {column!r} holds {t} values, which rayetl cannot store; "
        "convert it to text, a number, a boolean, a date or a timestamp"
    )


def cast_for_copy(array: pa.Array, column: str, pg_type: str) -> pa.Array:
    """The array cast, without loss, to the Arrow type that binary_copy_rows encodes as pg_type."""
    target = _ARROW_OF[pg_type]
    if pa.types.is_timestamp(array.type) and pa.types.is_timestamp(target):
        if (array.type.tz is None) != (target.tz is None):
            raise PermanentError(
                f"column {column!r} holds {array.type} values but the table stores {pg_type}; "
                "make the column time-zone aware (or naive) in every chunk"
            )
    try:
        # safe=True: refuse to truncate 1.5 to an integer, nanoseconds to microseconds, overflow.
        return array.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PermanentError(
            f"column {column!r} holds {array.type} values that do not fit the table's {pg_type} "
            f"exactly ({exc}); give the column the same type in every chunk"
        ) from exc


def binary_copy_rows(arrays: Sequence[pa.Array], *, batch_rows: int = 25_000) -> Iterator[memoryview]:
    """Rows in PostgreSQL's binary COPY format (no header or trailer), one batch at a time.

    Each array must already have the type cast_for_copy gives it (or large_binary for WKB).
    Arrow builds whole columns of (length, value) fields and joins them row-wise in C, so no
    Python code runs per value.
    """
    rows = len(arrays[0])
    for start in range(0, rows, batch_rows):
        columns = [array.slice(start, batch_rows) for array in arrays]
        count = _as_binary(np.full(len(columns[0]), len(columns), dtype=">i2"))
        joined = pc.binary_join_element_wise(count, *map(_fields, columns), _NO_SEPARATOR)
        offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)
        begin, end = offsets[joined.offset], offsets[joined.offset + len(joined)]
        yield memoryview(joined.buffers()[2])[begin:end]


def _fields(array: pa.Array) -> pa.Array:
    """Each value as one binary COPY field: a big-endian int32 length, then the value's bytes."""
    if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type):
        data = array.cast(pa.large_binary())  # text travels as its UTF-8 bytes
        lengths = pc.binary_length(data).fill_null(0).to_numpy().astype(">i4")
        fields = pc.binary_join_element_wise(_as_binary(lengths), data.fill_null(b""), _NO_SEPARATOR)
    else:
        wire, epoch = _WIRE[array.type]
        values = array
        if epoch:  # dates and timestamps travel as integers counted from 2000-01-01
            values = array.cast(pa.int32() if wire == ">i4" else pa.int64())
        values = values.fill_null(pa.scalar(False if wire == "u1" else 0, values.type))
        record = np.empty(len(values), dtype=[("length", ">i4"), ("value", wire)])
        record["length"] = np.dtype(wire).itemsize
        record["value"] = values.to_numpy(zero_copy_only=False) - epoch
        fields = _as_binary(record)
    return pc.if_else(array.is_null(), _NULL_FIELD, fields) if array.null_count else fields


def _as_binary(items: np.ndarray) -> pa.Array:
    """Each item of a contiguous numpy array as one large_binary value of its raw bytes."""
    width = items.dtype.itemsize
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(items), [None, pa.py_buffer(items)])
    return fixed.cast(pa.large_binary())
