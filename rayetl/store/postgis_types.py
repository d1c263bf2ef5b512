"""Chunks as PostgreSQL sees them: Arrow types → column types, and columns → binary COPY rows."""

import base64
import datetime as dt
import decimal
import json
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
    "Chunk",
    "arrays_for_copy",
    "as_arrow_chunk",
    "binary_copy_rows",
    "cast_for_copy",
    "column_types",
    "geometry_type_of",
    "pg_type_of",
    "to_arrow",
]

SRID = 4326
Chunk = pa.Table | pa.RecordBatch | gpd.GeoDataFrame  # geometries in `geom`, as WKB, in EPSG:4326
MAX_NAME_BYTES = 63  # PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1)
RESERVED_COLUMNS = ("fid", "geom")
# By WKB type code (1-7); only the first six can be a column's type.
_GEOMETRY_KINDS = (
    "Point",
    "LineString",
    "Polygon",
    "MultiPoint",
    "MultiLineString",
    "MultiPolygon",
    "GeometryCollection",
)

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


def as_arrow_chunk(chunk: Chunk, where: str) -> pa.Table:
    """The chunk as a load-ready Arrow table: attribute columns, and `geom` holding WKB.

    A pyarrow.Table (or RecordBatch) passes through untouched: its WKB is never parsed into
    geometries, so a chunk from Ray's object store goes to COPY without copies. A GeoDataFrame is
    converted once here (attributes to Arrow, geometries to WKB), so both take one code path.
    """
    if isinstance(chunk, gpd.GeoDataFrame):
        return _from_geodataframe(chunk, where)
    if isinstance(chunk, pa.RecordBatch):
        chunk = pa.Table.from_batches([chunk])
    if not isinstance(chunk, pa.Table):
        raise TypeError(f"{where}: expected a pyarrow.Table or a GeoDataFrame, not {type(chunk).__name__}")
    names = chunk.column_names
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise PermanentError(f"{where}: column names repeat: {repeated}")
    if "geom" not in names:
        raise PermanentError(
            f"{where} has no 'geom' column; put the geometries in a column named geom, as WKB"
        )
    geom_type = _storage_type(chunk.schema.field("geom").type)
    if not (
        pa.types.is_binary(geom_type) or pa.types.is_large_binary(geom_type) or _is_binary_view(geom_type)
    ):
        raise PermanentError(f"{where}: column 'geom' holds {geom_type} values, not WKB; encode it as WKB")
    return chunk


def column_types(chunk: pa.Table) -> dict[str, str]:
    """PostgreSQL types of the chunk's columns, `geom` last with the type of its WKB."""
    types = {}
    for name in chunk.column_names:
        if name != "geom":
            _check_column_name(name)
            types[name] = pg_type_of(chunk.schema.field(name).type, name)
    types["geom"] = f"geometry({geometry_type_of(chunk.column('geom'))},{SRID})"
    return types


def geometry_type_of(wkb: pa.Array | pa.ChunkedArray) -> str:
    """The one geometry type (e.g. MultiPolygon, MultiPointZ) the WKB values hold, from their headers.

    Reads the byte order and type code of every non-null value (ISO codes such as 1006 or 3006 and
    EWKB flags alike) with numpy, without parsing any coordinates. Only missing values: Geometry.
    """
    codes = _wkb_type_codes(_one_array(wkb).cast(pa.large_binary()))
    kinds = set()
    for code in np.unique(codes).tolist():
        base = code & 0x1FFFFFFF  # without the EWKB Z, M and SRID flags
        dims, kind = divmod(base, 1000)
        has_z = bool(code & 0x80000000) or dims in (1, 3)
        has_m = bool(code & 0x40000000) or dims in (2, 3)
        name = _GEOMETRY_KINDS[kind - 1] if 1 <= kind <= 7 and dims <= 3 else f"WKB type {code}"
        kinds.add(f"{name}{'Z' if has_z else ''}{'M' if has_m else ''}")
    if len(kinds) > 1 or not {k.rstrip("ZM") for k in kinds} <= set(_GEOMETRY_KINDS[:6]):
        raise PermanentError(
            f"the geometry column holds {', '.join(sorted(kinds))}; "
            "promote every geometry to one simple type (e.g. MultiPolygon) of one dimension before loading"
        )
    return kinds.pop() if kinds else "Geometry"  # only missing geometries: any type goes


def _wkb_type_codes(wkb: pa.Array) -> np.ndarray:
    """The type code (uint32, in its byte order) of each non-null WKB value."""
    values = wkb.drop_null()
    if not len(values):
        return np.empty(0, np.uint32)
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset : values.offset + len(values) + 1]
    starts = offsets[:-1]
    if (np.diff(offsets) < 5).any():
        raise PermanentError("the geometry column holds values too short to be WKB; encode it as WKB")
    data = np.frombuffer(values.buffers()[2], np.uint8)
    order = data[starts]
    if not np.isin(order, (0, 1)).all():
        raise PermanentError("the geometry column holds values that are not WKB (bad byte order mark)")
    header = data[starts[:, None] + np.arange(1, 5)].astype(np.uint32)
    little = header[:, 0] | header[:, 1] << 8 | header[:, 2] << 16 | header[:, 3] << 24
    big = header[:, 3] | header[:, 2] << 8 | header[:, 1] << 16 | header[:, 0] << 24
    return np.where(order == 1, little, big)


def _check_column_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise PermanentError(f"column {name!r}: column names must be non-empty strings")
    if name in RESERVED_COLUMNS:
        raise PermanentError(
            f"column {name!r} is reserved (fid is the primary key, geom the geometry); "
            f"rename it, e.g. to 'source_{name}'"
        )
    if len(name.encode()) > MAX_NAME_BYTES:
        raise PermanentError(f"column {name!r} is longer than {MAX_NAME_BYTES} bytes; shorten it")


def _from_geodataframe(frame: gpd.GeoDataFrame, where: str) -> pa.Table:
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
    geometry = frame.geometry
    names, arrays = [], []
    for name in frame.columns:
        if name == geometry.name:
            continue
        _check_column_name(name)
        if isinstance(frame[name].dtype, gpd.array.GeometryDtype):
            raise PermanentError(
                f"column {name!r} is a second geometry column; keep one, or convert it to WKT text"
            )
        names.append(name)
        arrays.append(to_arrow(frame[name], name))
    # Plain WKB: PostGIS gives SRID-less geometries the column's SRID (postgis_valid_typmod).
    wkb = pa.array(shapely.to_wkb(np.asarray(geometry.array)), type=pa.large_binary())
    return pa.Table.from_arrays([*arrays, wkb], names=[*names, "geom"])


def arrays_for_copy(chunk: pa.Table, columns: dict[str, str], where: str) -> list[pa.Array]:
    """The chunk's columns in table order, cast to the table's types; `geom` as its WKB."""
    have = set(chunk.column_names)
    if have != set(columns):
        raise PermanentError(
            f"{where}: columns differ from the staging table's (missing: "
            f"{', '.join(sorted(set(columns) - have)) or 'none'}; unexpected: "
            f"{', '.join(sorted(have - set(columns))) or 'none'}); every chunk needs the first one's columns"
        )
    arrays = []
    for name, pg_type in columns.items():
        array = _one_array(chunk.column(name))
        if name == "geom":
            # A geometry of another type or SRID is refused by PostGIS during the COPY.
            arrays.append(_storage(array).cast(pa.large_binary()))
        else:
            arrays.append(cast_for_copy(array, name, pg_type))
    return arrays


def to_arrow(values: pd.Series, column: str) -> pa.Array:
    """The column as one Arrow array; pandas' missing values (None, NaN, NaT, NA) become nulls."""
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PermanentError(
            f"column {column!r} mixes value types ({exc}); give it one type (e.g. cast it to str)"
        ) from exc
    return _one_array(array)


def pg_type_of(t: pa.DataType, column: str) -> str:
    """The PostgreSQL type that holds every value of an Arrow type exactly."""
    t = _storage_type(t)
    if pa.types.is_dictionary(t):  # categoricals are stored as their values
        return pg_type_of(t.value_type, column)
    if pa.types.is_null(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t):
        return "text"  # an all-missing column has no type of its own; text takes anything later
    if _is_nested(t):
        return "jsonb"  # GeoJSON arrays and objects, as their JSON
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        # Unsigned types need the next wider signed type; uint64 beyond 2**63-1 fails the cast.
        bits = t.bit_width * 2 if pa.types.is_unsigned_integer(t) else t.bit_width
        return "smallint" if bits <= 16 else "integer" if bits <= 32 else "bigint"
    if pa.types.is_floating(t):
        return "double precision" if t.bit_width == 64 else "real"
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or _is_binary_view(t)
    ):
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
    array = _storage(array)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if _is_nested(array.type) and pg_type in ("jsonb", "text"):
        return _json_values(array, column, jsonb=pg_type == "jsonb")
    if pg_type == "jsonb":
        if pa.types.is_null(array.type):
            return pa.nulls(len(array), pa.large_binary())
        raise PermanentError(
            f"column {column!r} holds {array.type} values but the table stores jsonb; "
            "give the column the same type in every chunk"
        )
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


def _json_values(array: pa.Array, column: str, *, jsonb: bool) -> pa.Array:
    """Each list or struct value as JSON text; jsonb's binary form is a version byte, then the text."""
    texts = []
    for value in array.to_pylist():  # nested columns are rare and small: Python per value is fine
        try:
            texts.append(
                None
                if value is None
                else json.dumps(value, ensure_ascii=False, allow_nan=False, default=_json_default)
            )
        except ValueError as exc:
            raise PermanentError(
                f"column {column!r} holds a list or object with NaN or infinity, which JSON cannot "
                "hold; replace them with nulls"
            ) from exc
    if not jsonb:
        return pa.array(texts, type=pa.large_string())
    return pa.array([None if t is None else b"\x01" + t.encode() for t in texts], type=pa.large_binary())


def _json_default(value: object) -> object:
    """JSON for the values Arrow nests that JSON has no type for."""
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, decimal.Decimal | dt.timedelta):
        return str(value)
    raise TypeError(f"{type(value).__name__} values cannot be written as JSON")


def _one_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array: a single chunk as it is (no copy), several joined."""
    if isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return values


def _storage(array: pa.Array) -> pa.Array:
    return array.storage if isinstance(array, pa.ExtensionArray) else array


def _storage_type(t: pa.DataType) -> pa.DataType:
    return t.storage_type if isinstance(t, pa.ExtensionType) else t


def _is_nested(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
        or pa.types.is_struct(t)
    )


def _is_string_view(t: pa.DataType) -> bool:
    return t == pa.string_view()


def _is_binary_view(t: pa.DataType) -> bool:
    return t == pa.binary_view()


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
