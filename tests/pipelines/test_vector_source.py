"""Vector sources: formats inferred, params checked, layers chosen, every format read in batches."""

import json
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pytest
import shapely

from rayetl.errors import InvalidRequest, NotFound, PermanentError
from rayetl.pipelines.vector_formats import ConverterParams, VectorFormat, infer_format
from rayetl.pipelines.vector_source import check_source, list_source_layers, read_batches

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not (CORPUS / "MANIFEST.json").is_file(), reason="shared corpus absent")
pytestmark = pytest.mark.filterwarnings("ignore:Measured \\(M\\) geometry types:UserWarning")

X, Y = [1.5, 2.25, -3.125], [40.5, -41.75, 42.0]


def sample_frame() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "id": np.arange(3, dtype="int64"),
            "value": [0.1, 1 / 3, 2.5e-300],
            "label": ["a", "straße", "ç"],
            "flag": [True, False, True],
        },
        geometry=shapely.points(X, Y),
        crs="EPSG:4326",
    )


def write_source(folder: Path, fmt: str, frame: gpd.GeoDataFrame | None = None) -> Path:
    """The sample frame written as one file of format fmt (a zip holds a shapefile, a KMZ doc.kml)."""
    frame = sample_frame() if frame is None else frame
    path = folder / f"sample.{fmt}"
    if fmt in ("kmz", "zip"):
        inner = folder / "inner"
        inner.mkdir()
        written = write_source(inner, "kml" if fmt == "kmz" else "shp", frame)
        with zipfile.ZipFile(path, "w") as archive:
            for member in sorted(inner.iterdir()):
                archive.write(member, "doc.kml" if fmt == "kmz" else member.name)
        assert written.exists()
    elif fmt == "parquet":
        frame.to_parquet(path)
    elif fmt == "gpkg":
        frame.to_file(path, layer="points")
    else:
        frame.to_file(path, driver={"kml": "LIBKML"}.get(fmt))
    return path


def geometries(batches) -> np.ndarray:
    return np.concatenate([shapely.from_wkb(b.geometry.to_numpy(zero_copy_only=False)) for b in batches])


# -- formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blob_name", "file_extension", "expected"),
    [
        ("roads.csv", None, VectorFormat.CSV),
        ("dir/Roads.JSON", None, VectorFormat.GEOJSON),
        ("parcels.shp.zip", None, VectorFormat.ZIP),
        ("export.txt", "csv", VectorFormat.CSV),
        ("data", ".GPKG", VectorFormat.GPKG),
        ("points.geojson", "json", VectorFormat.GEOJSON),
    ],
)
def test_infer_format_from_name_or_extension(blob_name, file_extension, expected):
    assert infer_format(blob_name, file_extension) is expected


@pytest.mark.parametrize(
    ("blob_name", "file_extension", "message"),
    [
        ("track.gpx", None, r"extension \.gpx is not supported; supported: csv, fgb, geojson"),
        ("roads.csv", "gpkg", r"named like a \.csv file but file_extension is 'gpkg'"),
        ("roads", None, "has no extension; set file_extension"),
        ("roads.csv", "dxf", "file_extension 'dxf' is not supported"),
    ],
)
def test_infer_format_rejects_unsupported_or_mismatched_extension(blob_name, file_extension, message):
    with pytest.raises(InvalidRequest, match=message):
        infer_format(blob_name, file_extension)


# -- converter params ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"wkt_column": "wkt", "lat_name": "lat", "lon_name": "lon"},
            "Specify either wkt_column or lat_name",
        ),
        ({"lat_name": "lat"}, r"Specify lat_name and lon_name together \(only lat_name was given\)"),
        ({"crs": "EPSG:999999"}, "converter_params.crs 'EPSG:999999' is not a CRS pyproj knows"),
        ({"on_invalid": "ignore"}, "on_invalid"),
        ({"delimiter": ";"}, "Extra inputs are not permitted"),
    ],
)
def test_converter_params_reject_contradictions_with_a_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        ConverterParams(**fields)


# -- every format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["geojson", "gpkg", "kml", "kmz", "shp", "zip", "fgb", "parquet"])
def test_read_batches_reads_every_format_with_its_attributes(tmp_path, fmt):
    path = write_source(tmp_path, fmt)
    info = check_source(path, infer_format(path.name), ConverterParams())
    batches = list(read_batches(path, infer_format(path.name), ConverterParams(), batch_size=2))

    assert [len(b) for b in batches] == [2, 1]
    assert info.feature_count == 3 and info.crs is not None
    read = geometries(batches)
    assert sorted(zip(shapely.get_x(read), shapely.get_y(read), strict=True)) == sorted(
        zip(X, Y, strict=True)
    )
    labels = [v for b in batches for v in b.attributes.column("label").to_pylist()]
    assert sorted(labels) == sorted(["a", "straße", "ç"])
    assert [r for b in batches for r in b.rows.tolist()] == [1, 2, 3]


@pytest.mark.parametrize("fmt", ["gpkg", "csv", "parquet", "fgb"])
def test_read_batches_yields_at_most_batch_size_rows(tmp_path, fmt):
    n = 10_000
    x, y = np.arange(n) % 180, np.arange(n) % 90
    frame = gpd.GeoDataFrame({"n": np.arange(n)}, geometry=shapely.points(x, y), crs=4326)
    path = tmp_path / f"many.{fmt}"
    params = ConverterParams()
    if fmt == "csv":
        frame.assign(lat=y, lon=x).drop(columns="geometry").to_csv(path, index=False)
        params = ConverterParams(lat_name="lat", lon_name="lon")
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_file(path)

    batches = list(read_batches(path, VectorFormat(fmt), params, batch_size=1000))

    assert [len(b) for b in batches] == [1000] * 10
    assert np.concatenate([b.rows for b in batches]).tolist() == list(range(1, n + 1))
    assert sorted(np.concatenate([b.attributes.column("n").to_numpy() for b in batches])) == list(range(n))


def test_read_batches_reads_geoparquet_in_batches_without_index_or_bbox_columns(tmp_path):
    frame = sample_frame().set_index("label")
    path = tmp_path / "indexed.parquet"
    frame.to_parquet(path, write_covering_bbox=True)

    batches = list(read_batches(path, VectorFormat.PARQUET, ConverterParams(), batch_size=2))

    assert [len(b) for b in batches] == [2, 1]
    assert batches[0].attributes.column_names == ["id", "value", "flag"]
    assert batches[0].declared_type == "MultiPoint"
    assert json.loads(batches[0].crs)["id"]["code"] == 4326


def test_geoparquet_without_geo_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.parquet"
    pa.parquet.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(InvalidRequest, match="without GeoParquet 'geo' metadata"):
        check_source(path, VectorFormat.PARQUET, ConverterParams())


# -- CSV -------------------------------------------------------------------------------------------


def write_csv(folder: Path, text: str, name: str = "points.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_lat_lon_keeps_columns_and_types(tmp_path):
    path = write_csv(tmp_path, "id,lat,lon,name,zip\r\n1,40.5,-3.25,straße,00123\r\n\r\n2,41,-4,b,00456\r\n")
    params = ConverterParams(lat_name="lat", lon_name="lon")

    info = check_source(path, VectorFormat.CSV, params)
    (batch,) = read_batches(path, VectorFormat.CSV, params, batch_size=100)

    assert info.crs == "EPSG:4326" and info.columns == ["id", "lat", "lon", "name", "zip"]
    assert batch.attributes.column("zip").to_pylist() == ["00123", "00456"]  # leading zeros stay text
    assert batch.attributes.column("lat").type == pa.float64()
    points = geometries([batch])
    assert shapely.get_x(points).tolist() == [-3.25, -4.0] and shapely.get_y(points).tolist() == [40.5, 41.0]


def test_csv_lat_lon_marks_unusable_coordinates_with_reasons(tmp_path):
    path = write_csv(
        tmp_path,
        "id,lat,lon\n1,40,-3\n2,95.5,10\n3,abc,10\n4,,10\n5,,\n6,10,200\n7,10,95.5\n",
    )
    params = ConverterParams(lat_name="lat", lon_name="lon")

    (batch,) = read_batches(path, VectorFormat.CSV, params, batch_size=100)

    assert batch.invalid.tolist() == [1, 2, 3, 5]
    assert batch.reasons == (
        "latitude 95.5 is outside [-90, 90] (are lat_name and lon_name swapped?)",
        "latitude 'abc' is not a number",
        "latitude is empty",
        "longitude 200.0 is outside [-180, 180]",
    )
    assert batch.geometry.is_null().to_pylist() == [False, True, True, True, True, True, False]


def test_csv_wkt_reports_unparsable_rows_and_drops_the_wkt_text(tmp_path):
    path = write_csv(
        tmp_path,
        'id,geometry\n1,"POINT (1 2)"\n2,"POINT (1"\n3,\n4,"LINESTRING (0 0, 1 1)"\n5,"NOT WKT"\n',
    )
    params = ConverterParams(wkt_column="geometry", crs="EPSG:3857")

    (batch,) = read_batches(path, VectorFormat.CSV, params, batch_size=100)

    assert batch.attributes.column_names == ["id"] and batch.crs == "EPSG:3857"
    assert batch.invalid.tolist() == [1, 4]
    assert batch.reasons[0].startswith("unparsable WKT 'POINT (1': ")
    assert batch.reasons[1].startswith("unparsable WKT 'NOT WKT': ")
    assert batch.geometry.is_null().to_pylist() == [False, True, True, False, True]


def test_csv_curved_wkt_is_linearized(tmp_path):
    path = write_csv(tmp_path, 'id,wkt\n1,"CIRCULARSTRING (0 0, 1 1, 2 0)"\n2,"LINESTRING (0 0, 2 0)"\n')

    (batch,) = read_batches(path, VectorFormat.CSV, ConverterParams(wkt_column="wkt"), batch_size=100)

    arc, line = geometries([batch])
    assert arc.geom_type == "LineString" and len(arc.coords) > 3
    assert arc.bounds == pytest.approx((0, 0, 2, 1), abs=1e-3) and line.geom_type == "LineString"


def test_csv_needs_coordinate_or_wkt_columns(tmp_path):
    path = write_csv(tmp_path, "id,x,y\n1,2,3\n")
    with pytest.raises(InvalidRequest, match="a CSV needs converter_params lat_name and lon_name"):
        check_source(path, VectorFormat.CSV, ConverterParams())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            ConverterParams(lat_name="lat", lon_name="longitude"),
            r"column 'lat' not found \(columns: id, latitude, longitude\). Set lat_name",
        ),
        (
            ConverterParams(wkt_column="wkt"),
            "column 'wkt' not found .* Set wkt_column to the column that holds",
        ),
    ],
)
def test_csv_unknown_column_lists_the_columns(tmp_path, params, message):
    path = write_csv(tmp_path, "id,latitude,longitude\n1,2,3\n", name="roads.csv")
    with pytest.raises(InvalidRequest, match=f"roads.csv: {message}"):
        check_source(path, VectorFormat.CSV, params)


def test_csv_wkt_without_crs_needs_one(tmp_path):
    path = write_csv(tmp_path, 'id,wkt\n1,"POINT (1 2)"\n')
    with pytest.raises(InvalidRequest, match="no CRS and no source_crs.*set converter_params.crs"):
        check_source(path, VectorFormat.CSV, ConverterParams(wkt_column="wkt"))
    assert check_source(path, VectorFormat.CSV, ConverterParams(wkt_column="wkt"), source_crs="EPSG:4326")


def test_csv_params_on_other_formats_are_refused(tmp_path):
    path = write_source(tmp_path, "geojson")
    with pytest.raises(InvalidRequest, match="apply to CSV files only"):
        check_source(path, VectorFormat.GEOJSON, ConverterParams(lat_name="a", lon_name="b"))


# -- layers and broken files -----------------------------------------------------------------------


def test_several_layers_need_a_layer_name_listing_them(tmp_path):
    path = write_source(tmp_path, "gpkg")
    sample_frame().to_file(path, layer="more", mode="a")

    with pytest.raises(
        InvalidRequest, match=r"holds 2 layers with features: 'points' \(3 features\), 'more'"
    ):
        check_source(path, VectorFormat.GPKG, ConverterParams())
    with pytest.raises(InvalidRequest, match="no layer 'nope'; layers: 'points' .*, 'more'"):
        check_source(path, VectorFormat.GPKG, ConverterParams(layer_name="nope"))
    assert check_source(path, VectorFormat.GPKG, ConverterParams(layer_name="more")).layer == "more"
    assert [(layer.name, layer.feature_count) for layer in list_source_layers(path, VectorFormat.GPKG)] == [
        ("points", 3),
        ("more", 3),
    ]


def test_zip_lists_every_vector_file_inside(tmp_path):
    path = write_source(tmp_path, "zip")
    with zipfile.ZipFile(path, "a") as archive:
        archive.write(write_source(tmp_path, "geojson"), "sub/extra.geojson")
        archive.writestr("README.txt", "not data")

    assert [layer.name for layer in list_source_layers(path, VectorFormat.ZIP)] == ["sample", "sample"]
    with pytest.raises(InvalidRequest, match="holds 2 layers with features"):
        check_source(path, VectorFormat.ZIP, ConverterParams())


def test_zip_without_vector_files_is_refused(tmp_path):
    path = tmp_path / "docs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.txt", "nothing")
    with pytest.raises(
        InvalidRequest, match="the zip holds no vector file GDAL can read .* members: README.txt"
    ):
        check_source(path, VectorFormat.ZIP, ConverterParams())


def test_empty_feature_collection_has_zero_features(tmp_path):
    path = tmp_path / "empty.geojson"
    path.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(InvalidRequest, match="zero features"):
        check_source(path, VectorFormat.GEOJSON, ConverterParams())


def test_a_file_truncated_mid_stream_fails_permanently(tmp_path):
    n = 10_000
    frame = gpd.GeoDataFrame({"n": np.arange(n)}, geometry=shapely.points(np.arange(n) % 90, 0), crs=4326)
    frame.to_file(tmp_path / "full.fgb")
    data = (tmp_path / "full.fgb").read_bytes()
    path = tmp_path / "cut.fgb"
    path.write_bytes(data[: len(data) // 2])

    assert check_source(path, VectorFormat.FGB, ConverterParams()).feature_count == n  # the header is intact
    with pytest.raises(
        PermanentError, match="cut.fgb: reading failed .* the file may be truncated or corrupt"
    ):
        list(read_batches(path, VectorFormat.FGB, ConverterParams(), batch_size=1000))


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="roads.gpkg: file not found"):
        check_source(tmp_path / "roads.gpkg", VectorFormat.GPKG, ConverterParams())


def test_garbage_file_says_it_cannot_be_read(tmp_path):
    path = tmp_path / "fake.gpkg"
    path.write_bytes(b"this is not a geopackage")
    with pytest.raises(
        InvalidRequest, match="fake.gpkg: cannot be read as gpkg .*not recognized.*re-export or re-upload it"
    ):
        check_source(path, VectorFormat.GPKG, ConverterParams())


# -- the shared corpus -----------------------------------------------------------------------------


@needs_corpus
def test_corpus_multi_layer_geopackage_lists_its_two_layers():
    path = CORPUS / "vector" / "test_gdal_error.gpkg"
    with pytest.raises(InvalidRequest) as excinfo:
        check_source(path, VectorFormat.GPKG, ConverterParams())
    assert "'cbs_arbeidsmarktregio_2014_gegeneraliseerd' (1 feature)" in str(excinfo.value)
    assert "'cbs_arbeidsmarktregio_2014_labelpoint' (1 feature)" in str(excinfo.value)


@needs_corpus
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad/truncated.kml", "truncated.kml: cannot be read as kml .*no element found"),
        ("bad/test_broken_geopackage.gpkg", "cannot be read as gpkg .*gpkg_spatial_ref_sys or gpkg_contents"),
        ("bad/empty.kml", r"empty.kml: the file holds zero features \(layers: none\)"),
    ],
)
def test_corpus_broken_files_give_clear_errors(name, message):
    path = CORPUS / name
    with pytest.raises(InvalidRequest, match=message):
        check_source(path, infer_format(name), ConverterParams())


@needs_corpus
@pytest.mark.parametrize("name", ["vector/styles.kml", "vector/styles.kmz"])
def test_corpus_kml_skips_the_empty_folder_layer(name):
    info = check_source(CORPUS / name, infer_format(name), ConverterParams())
    assert (info.layer, info.feature_count, info.driver) == ("Project 2", 2, "LIBKML")
    assert [(layer.name, layer.feature_count) for layer in info.layers] == [
        ("Project 2", 2),
        ("Untitled Folder", 0),
    ]


@needs_corpus
def test_corpus_volcano_csv_with_crlf_and_blank_line_reads_63_typed_rows():
    path = CORPUS / "vector" / "volcano_data_2010.csv"
    params = ConverterParams(lat_name="Latitude", lon_name="Longitude")

    batches = list(read_batches(path, VectorFormat.CSV, params, batch_size=50))

    assert [len(b) for b in batches] == [50, 13]
    assert batches[0].attributes.column("Year").type == pa.int32()
    assert batches[0].attributes.column("Name").to_pylist()[:2] == ["Tungurahua", "Eyjafjallajokull"]
    assert not any(len(b.invalid) for b in batches)


@needs_corpus
def test_corpus_zip_reports_its_uncompressed_size():
    path = CORPUS / "vector" / "nybb_16a.zip"
    with zipfile.ZipFile(path) as archive:
        expected = sum(info.file_size for info in archive.infolist())
    info = check_source(path, VectorFormat.ZIP, ConverterParams())
    assert (info.layer, info.crs, info.uncompressed_size_bytes) == ("nybb", "EPSG:2263", expected)


@pytest.mark.parametrize("rows", [3, 25_000])
def test_a_csv_counts_its_rows_without_parsing_them(tmp_path, rows):
    """The count sizes the chunks; a small file's blank lines are left out, so an empty one shows."""
    body = "".join(f"{i},{i % 80}.5,{i % 170}.25\n" for i in range(rows))
    path = write_csv(tmp_path, "id,lat,lon\n" + body.removesuffix("\n"))  # the last line without "\n"
    blank = write_csv(tmp_path, "id,lat,lon\n\n  \n\n", name="blank.csv")
    converter = ConverterParams(lat_name="lat", lon_name="lon")

    assert check_source(path, VectorFormat.CSV, converter).feature_count == rows
    with pytest.raises(InvalidRequest, match="zero features"):
        check_source(blank, VectorFormat.CSV, converter)
