"""Preparing batches: names cleaned, geometries cleaned into one Multi* type in EPSG:4326, values exact."""

import datetime as dt
import json
import struct
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import shapely

from rayetl.errors import PermanentError
from rayetl.pipelines.vector_columns import clean_column_name, clean_column_names
from rayetl.pipelines.vector_formats import ConverterParams, RawBatch, infer_format
from rayetl.pipelines.vector_prepare import GeometryParams, prepare_batch
from rayetl.pipelines.vector_source import read_batches
from rayetl.pipelines.vector_summary import ChunkSummary, merge_summaries, nothing_loaded_message

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not (CORPUS / "MANIFEST.json").is_file(), reason="shared corpus absent")
pytestmark = pytest.mark.filterwarnings("ignore:Measured \\(M\\) geometry types:UserWarning")


def raw_batch(wkt: list[str | None], *, crs="EPSG:4326", declared=None, attributes=None, first_row=1, **kw):
    geoms = shapely.from_wkt(np.array(wkt, dtype=object))
    wkb = pa.array(shapely.to_wkb(geoms), pa.binary())
    attributes = attributes if attributes is not None else pa.table({"n": np.arange(len(wkt))})
    rows = np.arange(first_row, first_row + len(wkt))
    return RawBatch("test.gpkg", attributes, wkb, rows, crs, declared, **kw)


def output(chunk) -> np.ndarray:
    return shapely.from_wkb(chunk.table.column("geom").to_numpy(zero_copy_only=False))


def wkb_type(value: bytes) -> int:
    return struct.unpack("<I" if value[0] == 1 else ">I", value[1:5])[0]


# -- column names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("Shape Area", "shape_area"),
        ("depth (m)", "depth_m"),
        ("a-b.c/d", "a_b_c_d"),
        ("Straße", "straße"),
        ("Ünïcødé Name", "ünïcødé_name"),
        ("2019 population", "col_2019_population"),
        ("geom", "geom_"),
        ("FID", "fid_"),
        ("Order", "order_"),
        ("select", "select_"),
        ("xmin", "xmin_"),
        ("???", "column_4"),
        ("", "column_4"),
    ],
)
def test_clean_column_name(name, cleaned):
    assert clean_column_name(name, 3) == cleaned


def test_clean_column_names_limits_names_to_63_bytes_between_characters():
    names, _ = clean_column_names(["a" * 70, "ü" * 40, "x" * 62 + "ü"])
    assert names == ["a" * 63, "ü" * 31, "x" * 62]
    assert all(len(name.encode()) <= 63 for name in names)


def test_clean_column_names_resolves_collisions_deterministically_and_reports_renames():
    source = ["Name", "name", "NAME", "name_2", "ü" * 40, "Ü" * 40]
    names, renamed = clean_column_names(source)
    assert names == ["name", "name_3", "name_4", "name_2", "ü" * 31, "ü" * 30 + "_2"]
    assert renamed == {
        "Name": "name",
        "NAME": "name_4",
        "name": "name_3",
        "ü" * 40: "ü" * 31,
        "Ü" * 40: "ü" * 30 + "_2",
    }
    assert clean_column_names(source) == (names, renamed)
    assert len(set(names)) == len(names)


# -- exact values ----------------------------------------------------------------------------------


def exact_values() -> pa.Table:
    return pa.table(
        {
            "f64": pa.array([0.1, 1 / 3, 5e-324, -0.0, 1.7976931348623157e308, None], pa.float64()),
            "i64": pa.array([2**63 - 1, -(2**63), 0, 1, None, 7], pa.int64()),
            "flag": pa.array([True, False, None, True, False, True]),
            "day": pa.array([dt.date(2024, 2, 29), None, dt.date(1900, 1, 1)] * 2, pa.date32()),
            "at": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 123000), None] * 3, pa.timestamp("ms")),
            "at_utc": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 999999)] * 6, pa.timestamp("us", tz="UTC")),
            "Text": pa.array(["straße", None, "日本", "", "ç", "a"]),
        }
    )


def assert_exact(table: pa.Table, expected: pa.Table) -> None:
    for name in expected.column_names:
        column = table.column(name.lower())
        assert column.type == expected.column(name).type, name
        assert column.combine_chunks().equals(expected.column(name).combine_chunks()), name
    f64 = table.column("f64").to_numpy(zero_copy_only=False)
    want = expected.column("f64").to_numpy(zero_copy_only=False)
    assert f64.view(np.int64)[:5].tolist() == want.view(np.int64)[:5].tolist()  # bit for bit, -0.0 too


def test_prepare_batch_keeps_attribute_values_and_types_exactly():
    values = exact_values()
    batch = raw_batch([f"POINT ({i} {i})" for i in range(6)], attributes=values)

    chunk = prepare_batch(batch)

    assert chunk.table.column_names == ["f64", "i64", "flag", "day", "at", "at_utc", "text", "geom"]
    assert_exact(chunk.table, values)
    assert chunk.summary.renamed == {"Text": "text"}


@pytest.mark.parametrize("suffix", ["gpkg", "parquet"])
def test_values_survive_a_file_read_and_prepare_exactly(tmp_path, suffix):
    values = exact_values().drop_columns(["at_utc"])  # GeoPackage keeps no time zone
    frame = gpd.GeoDataFrame(
        values.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get),
        geometry=shapely.points(np.arange(6), np.arange(6)),
        crs=4326,
    )
    path = tmp_path / f"values.{suffix}"
    if suffix == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_file(path)

    (batch,) = read_batches(path, infer_format(path.name), ConverterParams(), batch_size=100)
    table = prepare_batch(batch).table

    for name in ("f64", "i64", "flag", "Text"):
        assert table.column(name.lower()).to_pylist() == values.column(name).to_pylist(), name
    assert table.column("f64").type == pa.float64() and table.column("i64").type == pa.int64()
    assert table.column("day").cast(pa.date32()).to_pylist() == values.column("day").to_pylist()
    assert table.column("at").cast(pa.timestamp("ms")).to_pylist() == values.column("at").to_pylist()


# -- geometries ------------------------------------------------------------------------------------


def test_null_and_empty_geometries_are_dropped_and_counted():
    batch = raw_batch(["POINT (1 2)", None, "POINT EMPTY", None, "POINT (3 4)"])

    chunk = prepare_batch(batch)

    assert chunk.table.column("n").to_pylist() == [0, 4]
    summary = chunk.summary
    assert (summary.rows_in, summary.rows_out, summary.dropped_null, summary.dropped_empty) == (5, 2, 2, 1)
    assert (summary.geometry_type, summary.bbox) == ("MultiPoint", [1.0, 2.0, 3.0, 4.0])


def test_singles_and_multis_become_one_multi_type_as_2d_little_endian_wkb():
    batch = raw_batch(
        [
            "POLYGON Z ((0 0 1, 1 0 1, 1 1 1, 0 0 1))",
            "MULTIPOLYGON (((2 2, 3 2, 3 3, 2 2)), ((4 4, 5 4, 5 5, 4 4)))",
            "GEOMETRYCOLLECTION (POLYGON ((6 6, 7 6, 7 7, 6 6)))",
        ]
    )

    chunk = prepare_batch(batch)

    values = chunk.table.column("geom").to_pylist()
    assert [(v[0], wkb_type(v)) for v in values] == [(1, 6)] * 3
    geoms = output(chunk)
    assert not shapely.has_z(geoms).any()
    assert shapely.get_num_geometries(geoms).tolist() == [1, 2, 1]
    assert chunk.summary.geometry_type == "MultiPolygon"


def test_m_values_are_dropped():
    chunk = prepare_batch(raw_batch(["LINESTRING M (0 0 5, 1 1 6)", "LINESTRING ZM (0 0 1 2, 1 1 3 4)"]))
    assert [wkb_type(v) for v in chunk.table.column("geom").to_pylist()] == [5, 5]
    assert shapely.get_coordinates(output(chunk)).tolist() == [[0, 0], [1, 1], [0, 0], [1, 1]]


def test_invalid_geometries_are_repaired_and_counted():
    bowtie = "POLYGON ((0 0, 2 2, 2 0, 0 2, 0 0))"
    chunk = prepare_batch(raw_batch([bowtie, "POLYGON ((0 0, 1 0, 1 1, 0 0))"]))

    assert chunk.summary.repaired == 1 and chunk.summary.rows_out == 2
    repaired = output(chunk)[0]
    assert (
        repaired.is_valid and shapely.get_num_geometries(repaired) == 2 and repaired.area == pytest.approx(2)
    )


def test_unrepairable_geometries_fail_naming_rows_or_are_skipped_and_reported():
    wkt = ["POLYGON ((0 0, 1 0, 1 1, 0 0))", "POLYGON ((0 0, 1 0, 2 0, 0 0))"]
    with pytest.raises(PermanentError) as excinfo:
        prepare_batch(raw_batch(wkt, first_row=101))
    message = str(excinfo.value)
    assert (
        "test.gpkg: 1 row(s) cannot be loaded (first: row 102: invalid Polygon (Self-intersection" in message
    )
    assert "set converter_params.on_invalid='skip'" in message

    chunk = prepare_batch(raw_batch(wkt, first_row=101), on_invalid="skip")
    assert (chunk.summary.rows_out, chunk.summary.rejected) == (1, 1)
    assert chunk.summary.rejected_rows[0].row == 102
    assert "cannot be repaired into a Polygon" in chunk.summary.rejected_rows[0].reason


def test_rows_the_reader_marked_invalid_are_rejected_with_its_reason():
    batch = raw_batch(
        ["POINT (1 1)", None, "POINT (2 2)"], invalid=np.array([1]), reasons=("latitude 'x' is not a number",)
    )
    chunk = prepare_batch(batch, on_invalid="skip")
    assert (chunk.summary.rejected, chunk.summary.dropped_null, chunk.summary.rows_out) == (1, 0, 2)
    assert chunk.summary.rejected_rows[0].model_dump() == {"row": 2, "reason": "latitude 'x' is not a number"}


def test_mixed_geometry_families_fail_with_counts_per_type():
    batch = raw_batch(["POINT (0 0)", "POINT (1 1)", "POLYGON ((0 0, 1 0, 1 1, 0 0))", "MULTIPOINT ((2 2))"])
    with pytest.raises(
        PermanentError,
        match=r"test.gpkg mixes geometry families \(rows 1-4: MultiPoint: 1, Point: 2, Polygon: 1\)",
    ):
        prepare_batch(batch)


def test_a_later_chunk_of_another_family_fails():
    with pytest.raises(PermanentError, match=r"\(rows 1-1: LineString: 1\); earlier chunks held MultiPoint"):
        prepare_batch(raw_batch(["LINESTRING (0 0, 1 1)"]), target_type="MultiPoint")
    assert (
        prepare_batch(raw_batch(["POINT (0 0)"]), target_type="MultiPoint").summary.geometry_type
        == "MultiPoint"
    )


def test_rows_outside_the_declared_family_are_rejected():
    batch = raw_batch(["POLYGON ((0 0, 1 0, 1 1, 0 0))", "POINT (5 5)"], declared="Polygon")
    chunk = prepare_batch(batch, on_invalid="skip")
    assert chunk.summary.rejected_rows[0].reason == "a Point in a layer of Polygon geometries"
    assert chunk.summary.geometry_type == "MultiPolygon"


def test_collections_mixing_families_are_rejected():
    batch = raw_batch(["GEOMETRYCOLLECTION (POINT (0 0), LINESTRING (0 0, 1 1))", "LINESTRING (0 0, 1 1)"])
    chunk = prepare_batch(batch, on_invalid="skip")
    assert chunk.summary.rejected_rows[0].reason == "a GeometryCollection of LineString: 1, Point: 1"
    assert chunk.summary.geometry_type == "MultiLineString"


def test_reprojects_to_4326():
    batch = raw_batch(["POINT (1113194.9079327357 1118889.9748579597)", "POINT (0 0)"], crs="EPSG:3857")
    chunk = prepare_batch(batch)
    assert shapely.get_coordinates(output(chunk)) == pytest.approx(np.array([[10, 10], [0, 0]]), abs=1e-9)


def test_crs_comes_from_the_file_else_source_crs_else_fails():
    batch = raw_batch(["POINT (1113194.9079327357 0)"], crs=None)
    with pytest.raises(PermanentError, match="test.gpkg: no CRS and no source_crs.*set source_crs"):
        prepare_batch(batch)
    assert shapely.get_coordinates(output(prepare_batch(batch, source_crs="EPSG:3857")))[
        0, 0
    ] == pytest.approx(10)
    in_file = raw_batch(["POINT (1 2)"], crs="EPSG:4326")
    assert shapely.get_coordinates(output(prepare_batch(in_file, source_crs="EPSG:3857")))[0, 0] == 1


def test_coordinates_outside_4326_suggest_a_wrong_crs():
    batch = raw_batch(["POINT (500000 4649776)", "POINT (1 1)"], crs="EPSG:4326")
    chunk = prepare_batch(batch, on_invalid="skip")
    reason = chunk.summary.rejected_rows[0].reason
    assert reason.startswith("coordinates [500000, 4.64978e+06, 500000, 4.64978e+06] are outside EPSG:4326")
    assert "is EPSG:4326 really the CRS of this file?" in reason


def test_points_skip_shapely_with_identical_results():
    rng = np.random.default_rng(1)
    points = shapely.points(rng.uniform(-1e6, 1e6, 50), rng.uniform(-1e6, 1e6, 50))
    attributes = pa.table({"n": np.arange(50)})
    fast = RawBatch(
        "t", attributes, pa.array(shapely.to_wkb(points), pa.binary()), np.arange(50), "EPSG:3857"
    )
    big_endian = pa.array(shapely.to_wkb(points, byte_order=0), pa.binary())  # not plain: shapely path
    slow = RawBatch("t", attributes, big_endian, np.arange(50), "EPSG:3857")

    fast_chunk, slow_chunk = prepare_batch(fast), prepare_batch(slow)

    assert fast_chunk.table.equals(slow_chunk.table)
    assert fast_chunk.summary == slow_chunk.summary


def test_polygons_read_as_plain_wkb_are_passed_through_unchanged():
    polygons = shapely.buffer(shapely.points(np.arange(20), np.arange(20)), 0.4, quad_segs=2)
    polygons[3] = shapely.multipolygons([polygons[3], polygons[4]])
    attributes = pa.table({"n": np.arange(20)})
    plain = RawBatch(
        "t", attributes, pa.array(shapely.to_wkb(polygons), pa.binary()), np.arange(20), "EPSG:4326"
    )
    big_endian = pa.array(shapely.to_wkb(polygons, byte_order=0), pa.binary())  # must be encoded again
    encoded = RawBatch("t", attributes, big_endian, np.arange(20), "EPSG:4326")

    assert prepare_batch(plain).table.equals(prepare_batch(encoded).table)
    assert prepare_batch(plain).table.column("geom")[3].as_py() == shapely.to_wkb(polygons[3])


def test_simplify_and_precision():
    line = "LINESTRING (0 0, 1 0.001, 2 0, 3 0.001, 4 0)"
    params = GeometryParams(simplify_tolerance=0.01, precision=0.5)
    chunk = prepare_batch(raw_batch([line]), geometry_params=params)
    assert shapely.get_coordinates(output(chunk)).tolist() == [[0, 0], [4, 0]]
    points = prepare_batch(raw_batch(["POINT (1.26 1.24)"]), geometry_params=GeometryParams(precision=0.5))
    assert shapely.get_coordinates(output(points)).tolist() == [[1.5, 1.0]]


def test_geometry_params_reject_non_positive_values():
    with pytest.raises(ValueError, match="greater than 0"):
        GeometryParams(simplify_tolerance=0)


def test_unreadable_wkb_is_rejected():
    batch = RawBatch(
        "t",
        pa.table({"n": [1]}),
        pa.array([b"\x01\x10\x00\x00\x00"], pa.binary()),
        np.array([1]),
        "EPSG:4326",
    )
    chunk = prepare_batch(batch, on_invalid="skip")
    assert chunk.summary.rejected_rows[0].reason.startswith("TIN geometries are not supported")


# -- summaries -------------------------------------------------------------------------------------


def test_nothing_loaded_message_says_why():
    assert nothing_loaded_message("a.kml", ChunkSummary(rows_in=0, rows_out=0)) == (
        "a.kml: the file holds zero features; nothing to load"
    )
    summary = ChunkSummary(rows_in=5, rows_out=0, dropped_null=2, dropped_empty=1, rejected=2)
    assert nothing_loaded_message("a.gpkg", summary) == (
        "a.gpkg: every feature dropped: null geometries (2 of 5), empty geometries (1 of 5), rejected rows "
        "(see rejected_rows) (2 of 5); nothing to load. Check the file's geometries"
    )


def test_merge_summaries_adds_counts_and_joins_extents():
    first = prepare_batch(raw_batch(["POINT (1 2)", None]))
    second = prepare_batch(
        raw_batch(["POINT (-1 5)", "POINT EMPTY", "POINT (500 1)"], first_row=3), on_invalid="skip"
    )
    total = merge_summaries([first.summary, second.summary])
    assert (total.rows_in, total.rows_out, total.dropped_null, total.dropped_empty, total.rejected) == (
        5,
        2,
        1,
        1,
        1,
    )
    assert total.bbox == [-1.0, 2.0, 1.0, 5.0] and total.geometry_type == "MultiPoint"
    assert [r.row for r in total.rejected_rows] == [5]


# -- the shared corpus -----------------------------------------------------------------------------


def prepare_file(name: str, *, layer=None, source_crs=None, on_invalid="fail", batch_size=2, **converter):
    path = CORPUS / name
    params = ConverterParams(layer_name=layer, on_invalid=on_invalid, **converter)
    chunks, target = [], None
    for batch in read_batches(path, infer_format(name), params, batch_size=batch_size):
        chunk = prepare_batch(batch, target_type=target, source_crs=source_crs, on_invalid=on_invalid)
        target = target or chunk.summary.geometry_type
        chunks.append(chunk)
    return chunks, merge_summaries(c.summary for c in chunks)


def manifest_layers() -> dict[tuple[str, str], dict]:
    if not (CORPUS / "MANIFEST.json").is_file():
        return {}
    entries = json.loads((CORPUS / "MANIFEST.json").read_text())["files"]
    return {
        (e["file"], layer["name"]): layer
        for e in entries
        if e.get("facts")
        for layer in e["facts"].get("layers", [])
    }


LOADABLE = [
    ("vector/coutwildrnp.shp", "coutwildrnp", {}),
    ("vector/coutwildrnp.zip", "coutwildrnp", {}),
    ("vector/nybb_16a.zip", "nybb", {}),
    ("vector/naturalearth_lowres.shp", "naturalearth_lowres", {}),
    ("vector/rmnp.geojson", "rmnp", {}),
    ("vector/null_geom.geojson", "null_geom", {}),
    ("vector/test_gdal_error.gpkg", "cbs_arbeidsmarktregio_2014_gegeneraliseerd", {}),
    ("vector/test_gdal_error.gpkg", "cbs_arbeidsmarktregio_2014_labelpoint", {}),
    *[
        ("vector/test_dimensions.gpkg", layer, {})
        for layer in (
            "test_dimensions",
            "test_dimensions3",
            "test_dimensions4",
            "test_dimensions4_correct",
            "test_dimensions3_correct",
        )
    ],
    ("vector/test_gpkg_nulls.gpkg", "test_gpkg_nulls", {}),
    ("vector/line_zm.gpkg", "line_zm", {}),
    ("vector/polygon.kml", "Polygon.kml", {}),
    ("vector/volcano_data_2010.csv", "volcano_data_2010", {"lat_name": "Latitude", "lon_name": "Longitude"}),
    ("vector/wkt.csv", "wkt", {"wkt_column": "WKT"}),
    ("vector/curves_line.csv", "curves_line", {"wkt_column": "WKT"}),
]


@needs_corpus
@pytest.mark.parametrize(
    ("name", "layer", "converter"), LOADABLE, ids=[f"{n}:{layer}" for n, layer, _ in LOADABLE]
)
def test_corpus_file_prepares_to_its_manifest_facts(name, layer, converter):
    facts = manifest_layers()[(name, layer)]
    layer_name = layer if sum(file == name for file, _ in manifest_layers()) > 1 else None

    chunks, summary = prepare_file(name, layer=layer_name, source_crs="EPSG:4326", **converter)

    expected_rows = facts["feature_count"] - facts["null_geometries"] - facts["empty_geometries"]
    family = {t.removeprefix("Multi") for t in facts["geometry_types"]}
    assert (summary.rows_out, summary.rejected, summary.dropped_null) == (
        expected_rows,
        0,
        facts["null_geometries"],
    )
    assert summary.geometry_type == f"Multi{family.pop()}" and not family
    bounds = facts["bounds_4326"] or facts["bounds_native"]  # no CRS: loaded with source_crs EPSG:4326
    assert summary.bbox == pytest.approx(bounds, abs=1e-6)
    geoms = np.concatenate([output(c) for c in chunks])
    assert not shapely.has_z(geoms).any() and shapely.is_valid(geoms).all()


@needs_corpus
def test_corpus_nybb_is_reprojected_from_state_plane():
    chunks, summary = prepare_file("vector/nybb_16a.zip")
    assert [c.summary.rows_out for c in chunks] == [2, 2, 1]
    assert summary.bbox == pytest.approx([-74.255591, 40.496115, -73.700009, 40.915533], abs=1e-6)


@needs_corpus
@pytest.mark.parametrize(
    ("name", "count", "message"),
    [
        ("vector/test_geometry_null.gpkg", "dropped_null", "every feature dropped: null geometries (2 of 2)"),
        (
            "vector/test_geometry_empty.gpkg",
            "dropped_empty",
            "every feature dropped: empty geometries (45 of 45)",
        ),
    ],
)
def test_corpus_files_without_geometries_drop_every_feature(name, count, message):
    _, summary = prepare_file(name)
    assert summary.rows_out == 0 and getattr(summary, count) == summary.rows_in
    assert message in nothing_loaded_message(Path(name).name, summary)


@needs_corpus
def test_corpus_invalid_polygon_is_repaired_and_the_stray_point_rejected():
    with pytest.raises(PermanentError, match="row 2: a Point in a layer of Polygon geometries"):
        prepare_file("vector/test_geometry_valid.gpkg")
    chunks, summary = prepare_file("vector/test_geometry_valid.gpkg", on_invalid="skip")
    assert (summary.rows_out, summary.repaired, summary.rejected) == (1, 1, 1)
    assert shapely.is_valid(output(chunks[0])).all()


@needs_corpus
@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("vector/trio.geojson", "rows 1-3: LineString: 1, Point: 1, Polygon: 1"),
        ("vector/styles.kml", "rows 1-2: Point: 1, Polygon: 1"),
        ("vector/styles.kmz", "rows 1-2: Point: 1, Polygon: 1"),
    ],
)
def test_corpus_mixed_families_fail_with_counts(name, counts):
    with pytest.raises(PermanentError, match=f"{Path(name).name} mixes geometry families \\({counts}\\)"):
        prepare_file(name, batch_size=1000)


@needs_corpus
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("vector/test_tin.shp", "TIN geometries are not supported"),
        ("bad/bad.kml", "invalid Polygon (Too few points in geometry component"),
    ],
)
def test_corpus_geometries_that_cannot_load_are_rejected(name, reason):
    _, summary = prepare_file(name, source_crs="EPSG:4326", on_invalid="skip")
    assert summary.rejected == 1 and summary.rejected_rows[0].reason.startswith(reason)


def test_csv_bad_rows_fail_the_batch_or_are_skipped_and_reported(tmp_path):
    path = tmp_path / "shapes.csv"
    path.write_text('id,wkt\n1,"POINT (1 2)"\n2,"POINT (1"\n3,"POINT (3 4)"\n')
    params = ConverterParams(wkt_column="wkt", crs="EPSG:4326")
    (batch,) = read_batches(path, infer_format(path.name), params, batch_size=10)

    with pytest.raises(
        PermanentError, match=r"shapes.csv: 1 row\(s\) cannot be loaded \(first: row 2: unparsable WKT"
    ):
        prepare_batch(batch)
    chunk = prepare_batch(batch, on_invalid="skip")
    assert chunk.table.column("id").to_pylist() == [1, 3]
    assert (chunk.summary.rejected, chunk.summary.rejected_rows[0].row) == (1, 2)
