"""The PostGIS writer against a real PostGIS: types, exact values, exactly-once chunks, publishing."""

import datetime as dt
import math
import struct
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
import shapely
from conftest import wait_until

from rayetl.errors import Conflict, PermanentError
from rayetl.pipelines.vector_formats import ConverterParams, VectorFormat
from rayetl.pipelines.vector_prepare import prepare_batch
from rayetl.pipelines.vector_source import read_batches
from rayetl.store import postgis, postgis_publish
from rayetl.store.postgis import Table


@pytest.fixture
def schema(pool):
    name = f"t_{uuid.uuid4().hex[:8]}"
    yield name
    with pool.connection() as conn:
        conn.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(name)))
        conn.execute("DELETE FROM rayetl.loaded_chunks WHERE staging_table LIKE %s", (f'"{name}".%',))


def _points(n: int, *, seed: int = 0, start: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-180, 180, n), rng.uniform(-90, 90, n)
    return gpd.GeoDataFrame(
        {
            "id": np.arange(start, start + n),
            "x": x,
            "y": y,
            "name": [f"p{i}" for i in range(start, start + n)],
        },
        geometry=shapely.multipoints(shapely.points(x, y), indices=np.arange(n)),
        crs=4326,
    )


def _polygons(n: int, *, seed: int = 1) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-170, 170, n), rng.uniform(-80, 80, n)
    boxes = shapely.box(x, y, x + rng.uniform(0.001, 1, n), y + rng.uniform(0.001, 1, n))
    return gpd.GeoDataFrame(
        {"id": np.arange(n)}, geometry=shapely.multipolygons(boxes, indices=np.arange(n)), crs=4326
    )


def _arrow(frame: gpd.GeoDataFrame) -> pa.Table:
    """The frame as a prepared chunk is: attributes as Arrow, then `geom` as 2D ISO WKB (binary)."""
    attributes = pa.Table.from_pandas(frame.drop(columns=frame.geometry.name), preserve_index=False)
    wkb = shapely.to_wkb(np.asarray(frame.geometry.array), flavor="iso")
    return attributes.append_column(pa.field("geom", pa.binary()), pa.array(wkb, type=pa.binary()))


@pytest.fixture(params=["geodataframe", "arrow"])
def as_input(request):
    """Chunks as a GeoDataFrame, or as the Arrow table (WKB geometries) the pipelines hand over."""
    return (lambda frame: frame) if request.param == "geodataframe" else _arrow


def _stage(
    conn, schema: str, frame: gpd.GeoDataFrame | pa.Table, *, table: str = "roads", job: str = "job1"
) -> Table:
    staging = postgis.staging_table_for(Table(schema, table), f"{job}-{uuid.uuid4().hex}")
    postgis.create_staging_table(conn, staging, frame)
    return staging


def _count(conn, table: Table) -> int:
    query = psycopg.sql.SQL("SELECT count(*) AS n FROM {}").format(table.ident)
    return conn.execute(query).fetchone()["n"]


def _chunk_keys(conn, staging: Table) -> list[str]:
    rows = conn.execute(
        "SELECT chunk_key FROM rayetl.loaded_chunks WHERE staging_table = %s ORDER BY 1",
        (staging.ident.as_string(conn),),
    ).fetchall()
    return [r["chunk_key"] for r in rows]


# -- names and types -----------------------------------------------------------------------------


def test_staging_names_are_deterministic_and_fit_postgres_identifiers():
    long_target = Table("public", "straßen_" * 8)  # 80 bytes of UTF-8, split mid-character if naive
    first = postgis.staging_table_for(long_target, "a" * 64)
    assert first == postgis.staging_table_for(long_target, "a" * 64)
    assert first.name.startswith(postgis.STAGING_PREFIX) and len(first.name.encode()) <= 63
    assert first.schema == "public"
    assert postgis.staging_table_for(long_target, "b" * 64) != first
    assert (
        postgis.staging_table_for(Table("s", "roads"), "0123456789abcdef").name
        == "_rayetl_stage_roads_0123456789ab"
    )


def test_first_chunk_decides_the_column_types(pool, schema):
    frame = gpd.GeoDataFrame(
        {
            "i64": np.array([1], dtype="int64"),
            "i32": np.array([1], dtype="int32"),
            "i16": np.array([1], dtype="int16"),
            "i8": np.array([1], dtype="int8"),
            "u16": np.array([1], dtype="uint16"),
            "u32": np.array([1], dtype="uint32"),
            "f64": np.array([1.0], dtype="float64"),
            "f32": np.array([1.0], dtype="float32"),
            "flag": np.array([True]),
            "nullable_int": pd.array([None], dtype="Int64"),
            "nullable_int32": pd.array([1], dtype="Int32"),
            "nullable_bool": pd.array([None], dtype="boolean"),
            "nullable_float": pd.array([1.5], dtype="Float64"),
            "text_object": pd.Series(["a"], dtype=object),
            "text_str": pd.Series(["a"], dtype="str"),
            "text_arrow": pd.Series(["a"], dtype="string[pyarrow]"),
            "category": pd.Series(["a"], dtype="category"),
            "all_missing": pd.Series([None], dtype=object),
            "naive": pd.to_datetime(["2020-01-01"]),
            "aware": pd.to_datetime(["2020-01-01T00:00:00+02:00"]),
            "day": [dt.date(2020, 1, 1)],
            "day_arrow": pd.Series([dt.date(2020, 1, 1)], dtype="date32[pyarrow]"),
            "raw": [b"\x00"],
        },
        geometry=[shapely.MultiPolygon([shapely.box(0, 0, 1, 1)])],
        crs=4326,
    )
    with pool.connection() as conn:
        staging = _stage(conn, schema, frame)
        created = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (staging.ident.as_string(conn),),
        ).fetchall()
    assert {r["attname"]: r["type"] for r in created} == {
        "fid": "bigint",
        "i64": "bigint",
        "i32": "integer",
        "i16": "smallint",
        "i8": "smallint",
        "u16": "integer",
        "u32": "bigint",
        "f64": "double precision",
        "f32": "real",
        "flag": "boolean",
        "nullable_int": "bigint",
        "nullable_int32": "integer",
        "nullable_bool": "boolean",
        "nullable_float": "double precision",
        "text_object": "text",
        "text_str": "text",
        "text_arrow": "text",
        "category": "text",
        "all_missing": "text",
        "naive": "timestamp without time zone",
        "aware": "timestamp with time zone",
        "day": "date",
        "day_arrow": "date",
        "raw": "bytea",
        "geom": "geometry(MultiPolygon,4326)",
    }


def test_3d_geometries_get_a_z_column(pool, schema):
    frame = gpd.GeoDataFrame(geometry=[shapely.MultiPoint([(1, 2, 3)])], crs=4326)
    with pool.connection() as conn:
        staging = _stage(conn, schema, frame)
        postgis.load_chunk(conn, staging, frame, chunk_key="c0")
        row = conn.execute(
            psycopg.sql.SQL(
                "SELECT ST_Z(ST_GeometryN(geom, 1)) AS z, format_type(atttypid, atttypmod) AS type "
                "FROM {}, pg_attribute WHERE attrelid = %s::regclass AND attname = 'geom'"
            ).format(staging.ident),
            (staging.ident.as_string(conn),),
        ).fetchone()
    assert row == {"z": 3.0, "type": "geometry(MultiPointZ,4326)"}


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (gpd.GeoDataFrame({"fid": [1]}, geometry=[shapely.Point(0, 0)], crs=4326), "'fid' is reserved"),
        (gpd.GeoDataFrame({"geom": ["x"]}, geometry=[shapely.Point(0, 0)], crs=4326), "'geom' is reserved"),
        (gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)], crs=3857), "reproject them to EPSG:4326"),
        (
            gpd.GeoDataFrame(geometry=[shapely.Point(0, 0), shapely.MultiPoint([(0, 0)])], crs=4326),
            "promote every geometry to one simple type",
        ),
        (gpd.GeoDataFrame({"mixed": ["a", 1]}, geometry=[None, None], crs=4326), "'mixed' mixes value types"),
        (
            gpd.GeoDataFrame({"span": pd.to_timedelta([1], unit="s")}, geometry=[None], crs=4326),
            "'span' holds duration",
        ),
    ],
    ids=["fid", "geom", "crs", "mixed-geometry", "mixed-values", "duration"],
)
def test_unloadable_first_chunks_are_refused_with_a_fix(pool, schema, frame, message):
    with pool.connection() as conn, pytest.raises(PermanentError, match=message):
        _stage(conn, schema, frame)


# -- exact values --------------------------------------------------------------------------------

FLOATS = [0.1 + 0.2, 1 / 3, 1e-300, -0.0, float(2**53 + 1), 5e-324, 1.7976931348623157e308, math.inf, None]
AWARE = [
    dt.datetime(2020, 2, 29, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=dt.UTC),
    dt.datetime(2000, 1, 1, tzinfo=ZoneInfo("America/New_York")),
]


def _exact_frame() -> gpd.GeoDataFrame:
    n = len(FLOATS)

    def pad(values):
        return list(values) + [None] * (n - len(values))

    return gpd.GeoDataFrame(
        {
            "f64": pd.array(FLOATS, dtype="Float64"),  # NaN is pandas' missing value: None stands in
            "f32": pd.array(pad([1 / 3, -0.0, 3.4028234663852886e38, 1e-45]), dtype="Float32"),
            "i64": pd.array(pad([-(2**63), 2**63 - 1, 0, -1]), dtype="Int64"),
            "i32": pd.array(pad([-(2**31), 2**31 - 1]), dtype="Int32"),
            "i16": pd.array(pad([-(2**15), 2**15 - 1]), dtype="Int16"),
            "flag": pd.array(pad([True, False]), dtype="boolean"),
            "straße": pd.Series(pad(["straße", "名前", "🌍 emoji", "", "quote\"'\\tab\t"]), dtype="str"),
            "名前": pd.Series(pad([b"\x00\xff", b""]), dtype=object),
            "day": pd.Series(
                pad([dt.date(1, 1, 1), dt.date(1999, 12, 31), dt.date(2000, 1, 1)]), dtype=object
            ),
            "naive": pd.Series(
                pad(
                    [
                        dt.datetime(1970, 1, 1),
                        dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
                        dt.datetime(1900, 3, 1),
                    ]
                ),
                dtype="datetime64[us]",
            ),
            "aware": pd.Series(pd.to_datetime(pad(AWARE), utc=True)),
        },
        geometry=pad(
            [
                shapely.MultiPoint([(0.1 + 0.2, 1 / 3)]),
                shapely.MultiPoint([(-180, -90), (180, 90)]),
                shapely.MultiPoint([(1e-300, -0.0)]),
            ]
        ),
        crs=4326,
    )


def test_values_survive_the_round_trip_exactly(pool, schema):
    frame = _exact_frame()
    with pool.connection() as conn:
        staging = _stage(conn, schema, frame)
        postgis.load_chunk(conn, staging, frame, chunk_key="c0")
        with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
            columns = psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, frame.columns[:-1]))
            rows = cur.execute(
                psycopg.sql.SQL("SELECT {}, ST_AsBinary(geom), ST_SRID(geom) FROM {} ORDER BY fid").format(
                    columns, staging.ident
                )
            ).fetchall()
    got = list(zip(*rows, strict=True))
    assert [_bits(v) for v in got[0]] == [_bits(v) for v in FLOATS]
    assert [_bits(v, "f") for v in got[1]] == [
        _bits(None if pd.isna(v) else float(v), "f") for v in frame["f32"]
    ]
    for position, name in enumerate(["i64", "i32", "i16", "flag", "straße", "名前", "day", "naive"], start=2):
        assert list(got[position]) == [None if pd.isna(v) else v for v in frame[name]], name
    assert got[10][:3] == tuple(AWARE) and set(got[10][3:]) == {None}
    assert list(got[11]) == [None if g is None else shapely.to_wkb(g) for g in frame.geometry]
    assert set(got[12]) == {4326, None}


def _bits(value, kind: str = "d"):
    return None if value is None else struct.pack(f">{kind}", value)


def test_nan_is_stored_as_null(pool, schema):
    frame = gpd.GeoDataFrame({"v": [np.nan, 1.0]}, geometry=[None, None], crs=4326)
    with pool.connection() as conn:
        staging = _stage(conn, schema, frame)
        postgis.load_chunk(conn, staging, frame, chunk_key="c0")
        rows = conn.execute(psycopg.sql.SQL("SELECT v FROM {} ORDER BY fid").format(staging.ident)).fetchall()
    assert [r["v"] for r in rows] == [None, 1.0]


def test_a_later_chunk_is_cast_to_the_staging_types_without_loss(pool, schema):
    first = gpd.GeoDataFrame({"n": [1, 2]}, geometry=[None, None], crs=4326)  # int64 → bigint
    later = gpd.GeoDataFrame({"n": [3.0, np.nan]}, geometry=[None, None], crs=4326)  # ints with a null
    lossy = gpd.GeoDataFrame({"n": [3.5]}, geometry=[None], crs=4326)
    with pool.connection() as conn:
        staging = _stage(conn, schema, first)
        postgis.load_chunk(conn, staging, later, chunk_key="c1")
        with pytest.raises(PermanentError, match=r"column 'n' holds double values that do not fit .* bigint"):
            postgis.load_chunk(conn, staging, lossy, chunk_key="c2")
        rows = conn.execute(psycopg.sql.SQL("SELECT n FROM {} ORDER BY fid").format(staging.ident)).fetchall()
        assert [r["n"] for r in rows] == [3, None]
        assert _chunk_keys(conn, staging) == ["c1"]


def test_a_chunk_with_other_columns_is_refused(pool, schema, as_input):
    with pool.connection() as conn:
        staging = _stage(conn, schema, as_input(_points(10)))
        other = as_input(_points(10).rename(columns={"name": "label"}))
        with pytest.raises(
            PermanentError, match=r"chunk 'c0': columns differ .*missing: name; unexpected: label"
        ):
            postgis.load_chunk(conn, staging, other, chunk_key="c0")


def test_arrow_types_map_to_postgres_types(pool, schema):
    chunk = pa.table(
        {
            "large": pa.array(["a"], pa.large_string()),
            "view": pa.array(["a"], pa.string_view()),
            "coded": pa.array(["a"]).dictionary_encode(),
            "coded_int": pa.array([7], pa.int16()).dictionary_encode(),
            "tags": pa.array([["a"]], pa.list_(pa.string())),
            "sizes": pa.array([[1]], pa.large_list(pa.int64())),
            "props": pa.array([{"k": 1}], pa.struct([("k", pa.int64())])),
            "nothing": pa.nulls(1),
            "ms": pa.array([0], pa.timestamp("ms")),
            "raw_view": pa.array([b"x"], pa.binary_view()),
            "geom": pa.array([shapely.to_wkb(shapely.MultiLineString([[(0, 0), (1, 1)]]))], pa.binary()),
        }
    )
    with pool.connection() as conn:
        columns = postgis.create_staging_table(conn, _new_staging(schema), chunk)
    assert columns == {
        "large": "text",
        "view": "text",
        "coded": "text",
        "coded_int": "smallint",
        "tags": "jsonb",
        "sizes": "jsonb",
        "props": "jsonb",
        "nothing": "text",
        "ms": "timestamp without time zone",
        "raw_view": "bytea",
        "geom": "geometry(MultiLineString,4326)",
    }


def _new_staging(schema: str) -> Table:
    return postgis.staging_table_for(Table(schema, "roads"), uuid.uuid4().hex)


def _wkb_chunk(*geometries, flavor: str = "iso") -> pa.Table:
    wkb = [None if g is None else shapely.to_wkb(g, flavor=flavor) for g in geometries]
    return pa.table({"geom": pa.array(wkb, pa.binary())})


@pytest.mark.parametrize(
    ("chunk", "column_type"),
    [
        (_wkb_chunk(None, shapely.MultiPolygon([shapely.box(0, 0, 1, 1)])), "geometry(MultiPolygon,4326)"),
        (_wkb_chunk(shapely.MultiPoint([(0, 0, 1)])), "geometry(MultiPointZ,4326)"),
        (_wkb_chunk(shapely.MultiPoint([(0, 0, 1)]), flavor="extended"), "geometry(MultiPointZ,4326)"),
        (_wkb_chunk(shapely.Point(0, 0)), "geometry(Point,4326)"),
        (_wkb_chunk(None), "geometry(Geometry,4326)"),
        (
            pa.table({"geom": pa.array([shapely.to_wkb(shapely.Point(0, 0), byte_order=0)])}),
            "geometry(Point,4326)",
        ),
    ],
    ids=["multipolygon-after-null", "iso-z", "ewkb-z", "point", "only-nulls", "big-endian"],
)
def test_the_geometry_type_comes_from_the_wkb_headers(pool, schema, chunk, column_type):
    with pool.connection() as conn:
        columns = postgis.create_staging_table(conn, _new_staging(schema), chunk)
    assert columns == {"geom": column_type}


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (pa.table({"fid": [1], "geom": pa.array([None], pa.binary())}), "'fid' is reserved"),
        (pa.table({"id": [1]}), "has no 'geom' column; put the geometries in a column named geom"),
        (pa.table({"geom": ["POINT (0 0)"]}), "column 'geom' holds string values, not WKB"),
        (pa.table({"geom": pa.array([b"\x07\x01\x00\x00\x00"])}), "values that are not WKB"),
        (pa.table({"geom": pa.array([b"\x01\x01"])}), "values too short to be WKB"),
        (
            _wkb_chunk(shapely.MultiPoint([(0, 0)]), shapely.Point(0, 0)),
            "holds MultiPoint, Point; promote every geometry to one simple type",
        ),
        (
            _wkb_chunk(shapely.GeometryCollection([shapely.Point(0, 0)])),
            "holds GeometryCollection; promote every geometry",
        ),
        (
            pa.table({"span": pa.array([1], pa.duration("s")), "geom": pa.array([None], pa.binary())}),
            "'span' holds duration",
        ),
    ],
    ids=["fid", "no-geom", "wkt", "bad-byte-order", "short", "mixed-geometry", "collection", "duration"],
)
def test_unloadable_arrow_first_chunks_are_refused_with_a_fix(pool, schema, chunk, message):
    staging = _new_staging(schema)
    with pool.connection() as conn:
        with pytest.raises(PermanentError, match=message):
            postgis.create_staging_table(conn, staging, chunk)
        assert not postgis.table_exists(conn, schema, staging.name)


def test_a_later_arrow_chunk_of_another_geometry_type_is_refused_whole(pool, schema):
    first = _wkb_chunk(shapely.MultiPoint([(0, 0)]))
    later = _wkb_chunk(shapely.MultiPoint([(1, 1)]), shapely.Point(2, 2))
    with pool.connection() as conn:
        staging = _new_staging(schema)
        postgis.create_staging_table(conn, staging, first)
        with pytest.raises(PermanentError, match=r"chunk 'c1' into .*Geometry type \(Point\) does not match"):
            postgis.load_chunk(conn, staging, later, chunk_key="c1")
        assert _count(conn, staging) == 0 and _chunk_keys(conn, staging) == []


def test_list_and_struct_columns_land_as_jsonb(pool, schema):
    props = pa.struct([("name", pa.string()), ("n", pa.int64()), ("x", pa.float64()), ("day", pa.date32())])
    chunk = pa.table(
        {
            "tags": pa.array([["a", "straße"], [], None, ["🌍", None]], pa.list_(pa.string())),
            "nested": pa.array([[[1, 2], [3]], None, [[2**62]], []], pa.large_list(pa.list_(pa.int64()))),
            "props": pa.array(
                [
                    {"name": 'q"uote', "n": -1, "x": 0.1 + 0.2, "day": dt.date(2020, 2, 29)},
                    {"name": None, "n": None, "x": None, "day": None},
                    None,
                    {"name": "", "n": 0, "x": -0.0, "day": dt.date(1, 1, 1)},
                ],
                props,
            ),
            "geom": pa.array([shapely.to_wkb(shapely.MultiPoint([(i, i)])) for i in range(4)], pa.binary()),
        }
    )
    with pool.connection() as conn:
        staging = _new_staging(schema)
        postgis.create_staging_table(conn, staging, chunk)
        postgis.load_chunk(conn, staging, chunk, chunk_key="c0")
        # A later chunk whose first rows had no values still fits: nulls go into jsonb.
        nulls = {name: pa.nulls(1) for name in ("tags", "nested", "props")}
        postgis.load_chunk(conn, staging, pa.table({**nulls, "geom": chunk["geom"][:1]}), chunk_key="c1")
        rows = conn.execute(
            psycopg.sql.SQL(
                "SELECT tags, nested, props, props->>'x' AS x_text, jsonb_typeof(tags) AS kind "
                "FROM {} ORDER BY fid"
            ).format(staging.ident)
        ).fetchall()
    assert [r["tags"] for r in rows] == [["a", "straße"], [], None, ["🌍", None], None]
    assert [r["nested"] for r in rows] == [[[1, 2], [3]], None, [[2**62]], [], None]
    assert [r["props"] for r in rows] == [
        {"name": 'q"uote', "n": -1, "x": 0.1 + 0.2, "day": "2020-02-29"},
        {"name": None, "n": None, "x": None, "day": None},
        None,
        {"name": "", "n": 0, "x": -0.0, "day": "0001-01-01"},
        None,
    ]
    assert rows[0]["x_text"] == "0.30000000000000004" and rows[0]["kind"] == "array"


def test_a_list_column_in_a_later_chunk_lands_as_json_text_when_the_first_had_no_values(pool, schema):
    geom = pa.array([shapely.to_wkb(shapely.MultiPoint([(0, 0)]))], pa.binary())
    first = pa.table({"tags": pa.nulls(1), "geom": geom})
    later = pa.table({"tags": pa.array([["a", "b"]]), "geom": geom})
    with pool.connection() as conn:
        staging = _new_staging(schema)
        assert postgis.create_staging_table(conn, staging, first)["tags"] == "text"
        postgis.load_chunk(conn, staging, later, chunk_key="c1")
        row = conn.execute(psycopg.sql.SQL("SELECT tags FROM {}").format(staging.ident)).fetchone()
    assert row["tags"] == '["a", "b"]'


def test_nan_inside_a_list_is_refused_with_a_fix(pool, schema):
    chunk = pa.table({"v": pa.array([[1.0, math.nan]]), "geom": pa.array([None], pa.binary())})
    with pool.connection() as conn:
        staging = _new_staging(schema)
        postgis.create_staging_table(conn, staging, chunk)
        with pytest.raises(PermanentError, match="column 'v' holds a list or object with NaN"):
            postgis.load_chunk(conn, staging, chunk, chunk_key="c0")
        assert _chunk_keys(conn, staging) == []


# -- exactly once --------------------------------------------------------------------------------


def test_thousands_of_points_and_polygons_load_with_their_exact_geometries(pool, schema, as_input):
    points, polygons = _points(5000), _polygons(3000)
    with pool.connection() as conn:
        for frame in (points, polygons):
            staging = _stage(conn, schema, as_input(frame), table=frame.geom_type.iloc[0].lower())
            loaded = [
                postgis.load_chunk(
                    conn, staging, as_input(frame.iloc[start : start + 2000]), chunk_key=f"c{start}"
                )
                for start in range(0, len(frame), 2000)
            ]
            assert sum(chunk.rows for chunk in loaded) == len(frame)
            rows = conn.execute(
                psycopg.sql.SQL("SELECT id, ST_AsBinary(geom) AS wkb FROM {} ORDER BY id").format(
                    staging.ident
                )
            ).fetchall()
            assert [r["id"] for r in rows] == list(range(len(frame)))
            assert [r["wkb"] for r in rows] == list(shapely.to_wkb(frame.geometry.array))


def test_loading_a_chunk_twice_writes_its_rows_once(pool, schema, as_input):
    frame = _points(500)
    with pool.connection() as conn:
        staging = _stage(conn, schema, as_input(frame))
        first = postgis.load_chunk(conn, staging, as_input(frame), chunk_key="chunk-0")
        again = postgis.load_chunk(conn, staging, as_input(frame.iloc[:10]), chunk_key="chunk-0")
        assert (first.rows, first.already_loaded) == (500, False)
        assert (again.rows, again.already_loaded) == (500, True)  # the recorded count, not this frame's
        assert _count(conn, staging) == 500


def test_concurrent_loads_of_different_chunks_all_land(pool, schema):
    chunks = [_points(1000, seed=i, start=i * 1000) for i in range(8)]
    with pool.connection() as conn:
        staging = _stage(conn, schema, chunks[0])

    def load(i):
        with pool.connection() as conn:
            return postgis.load_chunk(conn, staging, chunks[i], chunk_key=f"chunk-{i}")

    with ThreadPoolExecutor(4) as executor:
        loaded = list(executor.map(load, range(8)))
    assert not any(chunk.already_loaded for chunk in loaded)
    with pool.connection() as conn:
        ids = conn.execute(
            psycopg.sql.SQL("SELECT array_agg(id ORDER BY id) AS ids FROM {}").format(staging.ident)
        )
        assert ids.fetchone()["ids"] == list(range(8000))
        assert _chunk_keys(conn, staging) == [f"chunk-{i}" for i in range(8)]


def test_concurrent_attempts_at_one_chunk_write_it_once(pool, schema, as_input):
    frame = as_input(_points(20_000))
    with pool.connection() as conn:
        staging = _stage(conn, schema, frame)

    def load(_):
        with pool.connection() as conn:
            return postgis.load_chunk(conn, staging, frame, chunk_key="chunk-0")

    with ThreadPoolExecutor(4) as executor:
        loaded = list(executor.map(load, range(4)))
    assert sorted(chunk.already_loaded for chunk in loaded) == [False, True, True, True]
    assert {chunk.rows for chunk in loaded} == {20_000}
    with pool.connection() as conn:
        assert _count(conn, staging) == 20_000


def test_a_chunk_postgres_refuses_leaves_no_rows_and_loads_once_fixed(pool, schema):
    frame = _points(3000)
    broken = frame.copy()
    broken.loc[1500, "name"] = "nul \x00 byte"  # PostgreSQL text cannot hold NUL: row 1501 fails
    with pool.connection() as conn:
        staging = _stage(conn, schema, frame)
        with pytest.raises(PermanentError, match=r"chunk 'c1' into .*: invalid byte sequence .*COPY"):
            postgis.load_chunk(conn, staging, broken, chunk_key="c1")
        assert _count(conn, staging) == 0 and _chunk_keys(conn, staging) == []
        assert postgis.load_chunk(conn, staging, frame, chunk_key="c1").already_loaded is False
        assert _count(conn, staging) == 3000


def test_a_connection_killed_mid_copy_leaves_no_rows_and_loads_again(pool, schema, database):
    frame = _points(3000)
    with pool.connection() as conn:
        staging = _stage(conn, schema, frame)
        # Hold the COPY at row 1500, with 1499 rows already written in its transaction.
        conn.execute(
            psycopg.sql.SQL(
                """CREATE FUNCTION {schema}.stall() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN IF NEW.id = 1500 THEN PERFORM pg_sleep(60); END IF; RETURN NEW; END $$;
                   CREATE TRIGGER stall BEFORE INSERT ON {table}
                       FOR EACH ROW EXECUTE FUNCTION {schema}.stall()"""
            ).format(schema=psycopg.sql.Identifier(schema), table=staging.ident)
        )
    outcome = {}
    with psycopg.connect(database.url()) as loader_conn:
        pid = loader_conn.info.backend_pid

        def load():
            try:
                outcome["result"] = postgis.load_chunk(loader_conn, staging, frame, chunk_key="c1")
            except psycopg.Error as exc:
                outcome["error"] = exc

        loader = threading.Thread(target=load)
        loader.start()
        with psycopg.connect(database.url(), autocommit=True) as conn:  # a fresh stats view per poll
            wait_until(
                lambda: conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (pid,)
                ).fetchone(),
                timeout_s=30,
                what="the COPY to stall at row 1500",
            )
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        loader.join(timeout=30)
    assert isinstance(outcome.get("error"), psycopg.OperationalError)  # transient: the coordinator retries
    with pool.connection() as conn:
        conn.execute(psycopg.sql.SQL("DROP TRIGGER stall ON {}").format(staging.ident))
        assert _count(conn, staging) == 0 and _chunk_keys(conn, staging) == []
        assert postgis.load_chunk(conn, staging, frame, chunk_key="c1").rows == 3000
        assert _count(conn, staging) == 3000


def test_each_call_commits_its_work_and_leaves_the_connection_idle(pool, schema, database):
    frame, target = _points(10), Table(schema, "roads")
    idle = psycopg.pq.TransactionStatus.IDLE
    with (
        psycopg.connect(database.url()) as conn,
        psycopg.connect(database.url(), autocommit=True, row_factory=psycopg.rows.dict_row) as observer,
    ):
        postgis.table_exists(conn, schema, "roads")
        postgis.list_staging_tables(conn, schema)
        assert conn.info.transaction_status == idle
        staging = _stage(conn, schema, frame)
        assert conn.info.transaction_status == idle and postgis.table_exists(observer, schema, staging.name)
        postgis.load_chunk(conn, staging, frame, chunk_key="c0")
        assert conn.info.transaction_status == idle and _count(observer, staging) == 10
        postgis_publish.publish_table(conn, staging, target)
        assert conn.info.transaction_status == idle and _count(observer, target) == 10


# -- publishing ----------------------------------------------------------------------------------


def _load(conn, schema: str, frame: gpd.GeoDataFrame, *, table: str = "roads") -> Table:
    staging = _stage(conn, schema, frame, table=table)
    postgis.load_chunk(conn, staging, frame, chunk_key="c0")
    return staging


def test_publish_builds_indexes_and_leaves_no_staging_behind(pool, schema):
    frame = _points(1000)
    frame["seen"] = pd.Timestamp("2024-05-01") + pd.to_timedelta(np.arange(1000), unit="min")
    target = Table(schema, "roads")
    with pool.connection() as conn:
        staging = _load(conn, schema, frame)
        published = postgis_publish.publish_table(
            conn, staging, target, attribute_indexes=["name", "id"], temporal_indexes=["seen"]
        )
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'roads'",
            (schema,),
        ).fetchall()
        sequence = conn.execute("SELECT pg_get_serial_sequence(%s, 'fid') AS seq", (f'"{schema}".roads',))
        assert sequence.fetchone()["seq"] == f"{schema}.roads_fid_seq"
        assert postgis.list_staging_tables(conn, schema) == []
        assert _chunk_keys(conn, staging) == []
        analyzed = conn.execute(
            "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (f'"{schema}".roads',)
        ).fetchone()
        with_statistics = conn.execute(
            "SELECT attname FROM pg_stats WHERE schemaname = %s AND tablename = 'roads'", (schema,)
        ).fetchall()
    definitions = {r["indexname"]: r["indexdef"] for r in indexes}
    assert set(definitions) == {
        "roads_pkey",
        "roads_geom_idx",
        "roads_name_idx",
        "roads_id_idx",
        "roads_seen_idx",
    }
    assert "USING gist (geom)" in definitions["roads_geom_idx"]
    assert "USING btree (seen)" in definitions["roads_seen_idx"]
    assert analyzed["reltuples"] == 1000
    assert {r["attname"] for r in with_statistics} >= {"geom", "name", "seen"}  # ANALYZE ran
    assert published.table == f"{schema}.roads" and published.rows == 1000
    assert published.geometry_type == "MultiPoint"
    assert published.bbox == pytest.approx(list(frame.total_bounds), abs=0)
    assert published.columns == {
        "fid": "bigint",
        "id": "bigint",
        "x": "double precision",
        "y": "double precision",
        "name": "text",
        "geom": "geometry(MultiPoint,4326)",
        "seen": "timestamp without time zone",
    }
    assert sorted(published.indexes) == sorted(definitions)


def test_publish_takes_a_known_extent_but_always_counts_the_rows(pool, schema):
    frame = _points(500)
    known = [-10.5, -5.25, 20.0, 30.125]  # what a caller that prepared the rows knows of them
    with pool.connection() as conn:
        published = postgis_publish.publish_table(
            conn, _load(conn, schema, frame), Table(schema, "roads"), extent=known
        )
        assert published.rows == 500 and published.bbox == known
        # An append's extent is the whole table's: measured, whatever the caller knows of its rows.
        more = _points(10, seed=1)
        appended = postgis_publish.publish_table(
            conn, _load(conn, schema, more), Table(schema, "roads"), if_exists="append", extent=known
        )
    assert appended.rows == 510
    assert appended.bbox == pytest.approx(list(pd.concat([frame, more]).total_bounds), abs=0)


def test_publish_replace_never_shows_readers_an_empty_or_partial_table(pool, schema, database):
    target = Table(schema, "roads")
    with pool.connection() as conn:
        postgis_publish.publish_table(conn, _load(conn, schema, _points(3000)), target)
        staging = _load(conn, schema, _points(5000, seed=7))
    counts, failures, stop = [], [], threading.Event()

    def read():
        query = psycopg.sql.SQL("SELECT count(*) FROM {}").format(target.ident)
        with psycopg.connect(database.url(), autocommit=True) as conn:
            while not stop.is_set():
                try:
                    counts.append(conn.execute(query).fetchone()[0])
                except psycopg.Error as exc:
                    failures.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        wait_until(lambda: len(counts) >= 20, timeout_s=30, what="the reader to start counting")
        with pool.connection() as conn:
            published = postgis_publish.publish_table(
                conn, staging, target, if_exists="replace", attribute_indexes=["id"]
            )
        seen = len(counts)
        wait_until(lambda: len(counts) >= seen + 20, timeout_s=30, what="the reader to count the new table")
    finally:
        stop.set()
        reader.join(timeout=30)
    assert failures == []
    assert set(counts) == {3000, 5000}
    assert counts == sorted(counts)  # old, then new: never back
    assert published.rows == 5000
    with pool.connection() as conn:
        assert postgis.list_staging_tables(conn, schema) == []


def test_publish_append_adds_rows_with_new_fids(pool, schema):
    target = Table(schema, "roads")
    with pool.connection() as conn:
        postgis_publish.publish_table(
            conn, _load(conn, schema, _points(100)), target, attribute_indexes=["id"]
        )
        staging = _load(conn, schema, _points(50, start=100))
        published = postgis_publish.publish_table(
            conn, staging, target, if_exists="append", attribute_indexes=["id"]
        )
        fids = conn.execute(
            psycopg.sql.SQL("SELECT count(DISTINCT fid) AS n, count(DISTINCT id) AS ids FROM {}").format(
                target.ident
            )
        ).fetchone()
        assert postgis.list_staging_tables(conn, schema) == []
        assert not postgis.table_exists(conn, schema, staging.name)
    assert published.rows == 150 and fids == {"n": 150, "ids": 150}
    assert sorted(published.indexes) == ["roads_geom_idx", "roads_id_idx", "roads_pkey"]


def test_chunks_may_bring_their_own_fids_and_the_table_numbers_rows_after_them(pool, schema):
    target = Table(schema, "roads")
    frame = _points(30)
    with pool.connection() as conn:
        staging = _stage(conn, schema, frame)
        postgis.load_chunk(conn, staging, frame.iloc[10:], chunk_key="b", fids=pa.array(range(110, 130)))
        postgis.load_chunk(conn, staging, frame.iloc[:10], chunk_key="a", fids=pa.array(range(100, 110)))
        with pytest.raises(PermanentError, match="fids must be 3 integers without nulls"):
            postgis.load_chunk(conn, staging, frame.iloc[:3], chunk_key="c", fids=pa.array([1, None, 3]))
        postgis_publish.publish_table(conn, staging, target)
        conn.execute(psycopg.sql.SQL("INSERT INTO {} (id, name) VALUES (-1, 'later')").format(target.ident))
        rows = conn.execute(
            psycopg.sql.SQL("SELECT fid, id FROM {} ORDER BY fid").format(target.ident)
        ).fetchall()
    assert [(r["fid"], r["id"]) for r in rows[:30]] == list(zip(range(100, 130), frame["id"], strict=True))
    assert (rows[30]["fid"], rows[30]["id"]) == (130, -1)


def test_append_to_a_table_with_other_columns_is_refused(pool, schema):
    target = Table(schema, "roads")
    with pool.connection() as conn:
        postgis_publish.publish_table(conn, _load(conn, schema, _points(10)), target)
        other = _points(10).rename(columns={"name": "label"}).astype({"id": "int32"})
        staging = _load(conn, schema, other)
        with pytest.raises(
            Conflict,
            match=r"cannot append to .*roads: columns differ: "
            r"id \(integer in the data, bigint in the table\); "
            r"label \(text in the data, absent in the table\); "
            r"name \(absent in the data, text in the table\)",
        ):
            postgis_publish.publish_table(conn, staging, target, if_exists="append")
        assert _count(conn, target) == 10


def test_publish_fail_refuses_an_existing_target(pool, schema):
    target = Table(schema, "roads")
    with pool.connection() as conn:
        postgis_publish.publish_table(conn, _load(conn, schema, _points(10)), target)
        staging = _load(conn, schema, _points(20))
        with pytest.raises(
            Conflict, match=r"table .*roads already exists; use if_exists='replace' .*'append'"
        ):
            postgis_publish.publish_table(conn, staging, target, if_exists="fail")
        assert _count(conn, target) == 10
        assert postgis.list_staging_tables(conn, schema) == [staging.name]  # the caller decides
        postgis.drop_staging(conn, staging)
        postgis.drop_staging(conn, staging)  # idempotent
        assert postgis.list_staging_tables(conn, schema) == []
        assert _chunk_keys(conn, staging) == []


def test_a_new_schema_and_a_non_ascii_table_name_work(pool):
    schema = f"t_{uuid.uuid4().hex[:8]}"
    target = Table(schema, "名前")
    try:
        with pool.connection() as conn:
            staging = _load(conn, schema, _points(5), table="名前")
            published = postgis_publish.publish_table(conn, staging, target, if_exists="append")
            assert postgis.table_exists(conn, schema, "名前") and published.rows == 5
    finally:
        with pool.connection() as conn:
            conn.execute(psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(psycopg.sql.Identifier(schema)))


def test_publish_refuses_indexes_on_unknown_or_non_temporal_columns(pool, schema):
    target = Table(schema, "roads")
    with pool.connection() as conn:
        staging = _load(conn, schema, _points(5))
        with pytest.raises(
            PermanentError, match=r"cannot index column 'nope': no such column \(columns: id, x"
        ):
            postgis_publish.publish_table(conn, staging, target, attribute_indexes=["nope"])
        with pytest.raises(PermanentError, match=r"temporal index on 'name': the column is text"):
            postgis_publish.publish_table(conn, staging, target, temporal_indexes=["name"])


def test_loading_into_a_published_staging_table_is_refused(pool, schema):
    target = Table(schema, "roads")
    with pool.connection() as conn:
        staging = _load(conn, schema, _points(5))
        postgis_publish.publish_table(conn, staging, target)
        with pytest.raises(PermanentError, match="staging table .* does not exist"):
            postgis.load_chunk(conn, staging, _points(5), chunk_key="late")


# -- a real file ---------------------------------------------------------------------------------


def test_corpus_wilderness_polygons_load_and_publish(pool, schema, corpus):
    path = corpus / "vector" / "coutwildrnp.shp"
    if not path.exists():
        pytest.skip(f"{path} is not in the corpus")
    frame = gpd.read_file(path)
    frame.columns = [c.lower() for c in frame.columns]
    parts, owners = shapely.get_parts(frame.geometry.array, return_index=True)
    frame = frame.set_geometry(shapely.multipolygons(parts, indices=owners), crs=frame.crs)
    target = Table(schema, "wilderness")
    with pool.connection() as conn:
        staging = _stage(conn, schema, frame.iloc[:30])
        for start in range(0, len(frame), 30):
            postgis.load_chunk(conn, staging, frame.iloc[start : start + 30], chunk_key=f"c{start}")
        published = postgis_publish.publish_table(conn, staging, target, attribute_indexes=["name"])
    assert published.rows == 67
    assert published.geometry_type == "MultiPolygon"
    assert published.bbox == pytest.approx(list(frame.total_bounds), abs=1e-9)


# -- a prepared chunk ----------------------------------------------------------------------------


def test_chunks_prepared_from_a_geopackage_load_and_publish_exactly(pool, schema, tmp_path):
    source = gpd.GeoDataFrame(
        {
            "code": np.array([10, -(2**40), 0, 7, 2**62], dtype="int64"),
            "Area km²": [0.1 + 0.2, 1 / 3, 2.5e-10, 1e-300, None],
            "name": ["straße", "名前", "", None, "🌍"],
            "open": [True, False, True, False, True],
        },
        geometry=[
            shapely.box(0.1, 0.2, 0.3, 0.4),
            shapely.MultiPolygon([shapely.box(1, 1, 2, 2), shapely.box(3, 3, 4, 4)]),
            shapely.box(-180, -90, -179.5, -89.5),
            shapely.box(179.5, 89.5, 180, 90),
            shapely.box(1 / 3, 1 / 7, 2 / 3, 2 / 7),
        ],
        crs=4326,
    )
    path = tmp_path / "parcels.gpkg"
    source.to_file(path, driver="GPKG")
    chunks = [
        prepare_batch(batch).table
        for batch in read_batches(path, VectorFormat.GPKG, ConverterParams(), batch_size=2)
    ]
    assert len(chunks) == 3 and chunks[0].column_names[-1] == "geom"
    target = Table(schema, "parcels")
    with pool.connection() as conn:
        staging = postgis.staging_table_for(target, "job-gpkg")
        postgis.create_staging_table(conn, staging, chunks[0])
        for i, chunk in enumerate(chunks):
            postgis.load_chunk(conn, staging, chunk, chunk_key=f"c{i}")
        published = postgis_publish.publish_table(conn, staging, target)
        with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
            rows = cur.execute(
                psycopg.sql.SQL(
                    'SELECT code, "area_km²", name, open, ST_AsBinary(geom), ST_SRID(geom), '
                    "GeometryType(geom) FROM {} ORDER BY fid"
                ).format(target.ident)
            ).fetchall()
    assert published.rows == 5
    assert published.geometry_type == "MultiPolygon"
    assert published.columns == {
        "fid": "bigint",
        "code": "bigint",
        "area_km²": "double precision",
        "name": "text",
        "open": "boolean",
        "geom": "geometry(MultiPolygon,4326)",
    }
    assert published.bbox == pytest.approx([-180, -90, 180, 90], abs=0)
    code, area, name, is_open, wkb, srid, kind = zip(*rows, strict=True)
    assert list(code) == source["code"].tolist()
    assert [_bits(v) for v in area] == [_bits(None if pd.isna(v) else v) for v in source["Area km²"]]
    assert list(name) == ["straße", "名前", "", None, "🌍"]
    assert list(is_open) == source["open"].tolist()
    assert list(wkb) == [bytes(v) for chunk in chunks for v in chunk["geom"].to_pylist()]
    assert shapely.equals(shapely.from_wkb(list(wkb)), source.geometry.array).all()
    assert set(srid) == {4326} and set(kind) == {"MULTIPOLYGON"}
