"""ingest_vector over HTTP for every format: generated files and the shared corpus, values kept exactly."""

import datetime as dt
import json
import math
import re
import shutil
import time
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
import shapely.affinity

from rayetl.store import pgstac

pytestmark = pytest.mark.filterwarnings("ignore:Measured \\(M\\) geometry types:UserWarning")

JOB = "/api/jobs/ingest_vector"
COLLECTION = "system-vectors"
SCHEMA = "geo"
BOUNDS_TOLERANCE_DEG = 1e-4  # ST_Extent reads the float4 boxes PostGIS caches with each geometry


# -- helpers -----------------------------------------------------------------------------------------


@dataclass
class Expected:
    """What the published table must look like."""

    rows: int
    geometry_type: str  # e.g. "MultiPolygon"
    bounds: list[float]  # [xmin, ymin, xmax, ymax] in EPSG:4326
    fields: list[str]  # the source's attribute names, before cleaning
    required_columns: list[str] = field(default_factory=list)  # cleaned names that must be there
    indexed: list[str] = field(default_factory=list)  # attribute columns with a B-tree


@dataclass
class Source:
    """Files to put in the container (the first is the one to load) and the job's params."""

    files: list[Path]
    params: dict[str, Any]
    expected: Expected
    frame: gpd.GeoDataFrame | None = None  # the features written, in EPSG:4326


def put(settings, source: Path, blob: str) -> str:
    """Copy a file into the default container; returns its blob name."""
    target = settings.local_storage_root / settings.default_container / blob
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return blob


def put_source(settings, source: Source, folder: str) -> str:
    """Put a source's files side by side in the container (a shapefile's siblings share its stem)."""
    main, *siblings = source.files
    blob = put(settings, main, f"{folder}/{main.name}")
    for sibling in siblings:
        put(settings, sibling, f"{folder}/{sibling.name}")
    return blob


def submit(api, **params) -> str:
    response = api.post(JOB, json=params)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def run_ingest(api, wait_for_job, **params) -> dict[str, Any]:
    """Submit, wait, and return the result of a job that must complete."""
    job = wait_for_job(submit(api, **params), timeout_s=120)
    assert job.status == "completed", job.error
    return job.result


WAIT_S = 600  # the jobs of a batch run side by side on a small machine


@dataclass
class Submitted:
    """A job a batch fixture submitted, for its test to wait on and check."""

    job_id: str
    table: str


def submit_batch(api, cases: dict[str, dict[str, Any]]) -> dict[str, Submitted]:
    """Submit every case at once (each params dict holds its table_name) so their jobs overlap."""
    return {case: Submitted(submit(api, **params), params["table_name"]) for case, params in cases.items()}


def completed(wait_for_job, submitted: Submitted) -> dict[str, Any]:
    job = wait_for_job(submitted.job_id, timeout_s=WAIT_S)
    assert job.status == "completed", job.error
    return job.result


def fetch_all(pool, query: str, params: tuple = ()) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return conn.execute(query, params).fetchall()


def staging_tables(pool, schema: str = SCHEMA, table: str = "") -> list[str]:
    """Staging tables left in the schema (only those of `table`'s jobs when given: jobs of a batch
    run side by side, and the others may still be loading)."""
    prefix = f"_rayetl_stage_{table}_" if table else "_rayetl_stage_"
    rows = fetch_all(
        pool,
        "SELECT tablename FROM pg_tables WHERE schemaname = %s AND starts_with(tablename, %s)",
        (schema, prefix),
    )
    return [r["tablename"] for r in rows]


def table_columns(pool, table: str, schema: str = SCHEMA) -> dict[str, str]:
    """Column name -> information_schema data_type, in table order."""
    rows = fetch_all(
        pool,
        """SELECT column_name, data_type FROM information_schema.columns
           WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position""",
        (schema, table),
    )
    return {r["column_name"]: r["data_type"] for r in rows}


def reserved_words(pool) -> set[str]:
    """PostgreSQL's key words that cannot name a column without quotes."""
    return {
        r["word"] for r in fetch_all(pool, "SELECT word FROM pg_get_keywords() WHERE catcode IN ('R', 'T')")
    }


def _is_identifier_char(char: str, first: bool) -> bool:
    # Letters of any script (with their combining marks: Devanagari, Thai, Hebrew vowel signs),
    # digits after the first character, and '_'. PostgreSQL takes any non-ASCII character unquoted.
    kind = unicodedata.category(char)
    return char == "_" or kind.startswith("L") or (not first and (kind.startswith(("M", "N"))))


def assert_safe_names(pool, names: list[str]) -> None:
    """Each name is usable unquoted: lower case, letters/digits/_, no leading digit, ≤63 bytes."""
    reserved = reserved_words(pool)
    for name in names:
        assert name == name.lower(), name
        assert name and all(_is_identifier_char(c, i == 0) for i, c in enumerate(name)), name
        assert len(name.encode()) <= 63, name
        assert name not in reserved, name
        assert not name.isascii() or re.fullmatch(r"[a-z_][a-z0-9_]*", name), name


def assert_result(result: dict[str, Any], table: str, expected: Expected) -> None:
    """The job's result names the table, its rows and geometry type."""
    assert result["table"] == f"{SCHEMA}.{table}"
    assert result["rows_loaded"] == expected.rows
    assert result["geometry_type"] == expected.geometry_type
    assert result["stac_item_id"] == f"{SCHEMA}.{table}"
    assert result["stac_collection"] == COLLECTION
    assert result["bbox"] == pytest.approx(expected.bounds, abs=BOUNDS_TOLERANCE_DEG)


def assert_published(pool, settings, table: str, expected: Expected) -> None:
    """Rows, geometry type, SRID, extent, columns, indexes, STAC item, no staging table left."""
    qualified = f"{SCHEMA}.{table}"
    upper = expected.geometry_type.upper()
    (counted,) = fetch_all(pool, f"SELECT count(*) AS n FROM {qualified}")
    assert counted["n"] == expected.rows

    (column,) = fetch_all(
        pool,
        """SELECT type, srid, coord_dimension FROM geometry_columns
           WHERE f_table_schema = %s AND f_table_name = %s AND f_geometry_column = 'geom'""",
        (SCHEMA, table),
    )
    assert (column["type"], column["srid"], column["coord_dimension"]) == (upper, 4326, 2)
    kinds = fetch_all(
        pool, f"SELECT DISTINCT GeometryType(geom) AS t, ST_SRID(geom) AS srid FROM {qualified}"
    )
    assert [(k["t"], k["srid"]) for k in kinds] == [(upper, 4326)]
    (found,) = fetch_all(pool, "SELECT Find_SRID(%s, %s, 'geom') AS srid", (SCHEMA, table))
    assert found["srid"] == 4326
    (extent,) = fetch_all(
        pool,
        f"""SELECT ST_XMin(e) AS xmin, ST_YMin(e) AS ymin, ST_XMax(e) AS xmax, ST_YMax(e) AS ymax
            FROM (SELECT ST_Extent(geom) AS e FROM {qualified}) s""",
    )
    got = [extent["xmin"], extent["ymin"], extent["xmax"], extent["ymax"]]
    assert got == pytest.approx(expected.bounds, abs=BOUNDS_TOLERANCE_DEG)

    columns = table_columns(pool, table)
    assert list(columns)[0] == "fid" and "geom" in columns
    attributes = [name for name in columns if name not in ("fid", "geom")]
    assert_safe_names(pool, attributes)
    assert len(attributes) == len(expected.fields), (attributes, expected.fields)
    reserved = reserved_words(pool)
    for name in expected.fields:  # a plain ASCII name only changes case (and a key word gains a suffix)
        plain = name.lower()
        if re.fullmatch(r"[a-z_][a-z0-9_]*", plain) and plain not in ("fid", "geom"):
            assert (plain if plain not in reserved else f"{plain}_") in attributes, (name, attributes)
    for name in expected.required_columns:
        assert name in attributes, (name, attributes)

    indexes = [
        r["indexdef"]
        for r in fetch_all(
            pool, "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s", (SCHEMA, table)
        )
    ]
    assert any(re.search(r"USING gist \(geom\)", d) for d in indexes), indexes
    for name in expected.indexed:
        assert any(re.search(rf'USING btree \("?{re.escape(name)}"?\)', d) for d in indexes), (name, indexes)

    items = pgstac.search_items(settings, COLLECTION, ids=[qualified])
    assert len(items) == 1
    assert items[0]["collection"] == COLLECTION
    assert items[0]["properties"]["table:row_count"] == expected.rows
    assert items[0]["bbox"] == pytest.approx(expected.bounds, abs=BOUNDS_TOLERANCE_DEG)
    assert staging_tables(pool, SCHEMA, table) == []


def _plain(value: Any) -> Any:
    """A value as Python compares it: None for every kind of missing, naive UTC date-times."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def assert_values_match(pool, table: str, source: pa.Table, renamed: dict[str, str], order_by: str = "fid"):
    """Every attribute of every row as the source holds it (rows in source order)."""
    names = {name: renamed.get(name, name) for name in source.column_names}
    selected = ", ".join(f'"{column}"' for column in names.values())
    rows = fetch_all(pool, f"SELECT {selected} FROM {SCHEMA}.{table} ORDER BY {order_by}")
    assert len(rows) == source.num_rows
    for name, column in names.items():
        expected = [_plain(v) for v in source.column(name).to_pylist()]
        got = [_plain(r[column]) for r in rows]
        assert got == expected, f"column {name!r} ({column}): {got} != {expected}"


def source_attributes(path: Path, layer: str | None = None) -> pa.Table:
    """The attributes of the features that have a geometry, as GDAL (or pyarrow) reads them."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        geometry = "geometry"
    else:
        meta, table = pyogrio.read_arrow(path, layer=layer)
        geometry = meta["geometry_name"] or "wkb_geometry"
    keep = table.column(geometry).is_valid()
    table = table.filter(keep).drop_columns([geometry])
    return table.drop_columns([n for n in table.column_names if n.startswith("__index_level")])


def assert_geometries_match(pool, table: str, frame: gpd.GeoDataFrame, order_by: str) -> None:
    """Each row's geometry is the source's (in EPSG:4326, within reprojection round-off)."""
    rows = fetch_all(pool, f"SELECT ST_AsBinary(geom) AS wkb FROM {SCHEMA}.{table} ORDER BY {order_by}")
    got = shapely.from_wkb([bytes(r["wkb"]) for r in rows])
    expected = frame.to_crs("EPSG:4326").geometry.values
    assert len(got) == len(expected)
    distances = shapely.hausdorff_distance(got, np.asarray(expected))
    assert float(distances.max()) < 1e-6, distances.max()


# -- generated sources -------------------------------------------------------------------------------

ATTRIBUTES = ["Site Name", "Value", "Count"]


def sample_frame(family: str, n: int, *, seed: int = 0, prefix: str = "site") -> gpd.GeoDataFrame:
    """n features of one family in EPSG:4326 (every third one a two-part Multi geometry)."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(5.0, 15.0, n), rng.uniform(45.0, 55.0, n)
    if family == "Point":
        geoms = list(shapely.points(x, y))
    elif family == "LineString":
        single = [
            shapely.LineString([(a, b), (a + 0.05, b + 0.02), (a + 0.1, b)])
            for a, b in zip(x, y, strict=True)
        ]
        geoms = [
            shapely.MultiLineString([g, shapely.affinity.translate(g, 0, 0.1)]) if i % 3 == 0 else g
            for i, g in enumerate(single)
        ]
    else:
        single = list(shapely.box(x, y, x + 0.05, y + 0.05))
        geoms = [
            shapely.MultiPolygon([g, shapely.affinity.translate(g, 0.1, 0)]) if i % 3 == 0 else g
            for i, g in enumerate(single)
        ]
    return gpd.GeoDataFrame(
        {
            "Site Name": [f"{prefix} {i}" for i in range(n)],
            "Value": rng.random(n),
            "Count": np.arange(n, dtype=np.int32),  # LIBKML writes 64-bit integers as text
        },
        geometry=geoms,
        crs="EPSG:4326",
    )


def expected_of(frame: gpd.GeoDataFrame, family: str, fields: list[str] | None = None) -> Expected:
    return Expected(
        rows=len(frame),
        geometry_type=f"Multi{family}",
        bounds=[float(v) for v in frame.total_bounds],
        fields=fields or ATTRIBUTES,
        required_columns=["site_name", "value", "count"],
        indexed=["count"],
    )


INDEXES = {"indexes": {"attributes": ["count"]}}


def make_csv_latlon(folder: Path) -> Source:
    frame = sample_frame("Point", 120, seed=1)
    table = pd.DataFrame(frame.drop(columns="geometry"))
    table["Latitude"], table["Longitude"] = frame.geometry.y, frame.geometry.x
    path = folder / "sites.csv"
    table.to_csv(path, index=False)
    params = {"converter_params": {"lat_name": "Latitude", "lon_name": "Longitude"}, **INDEXES}
    return Source(
        [path], params, expected_of(frame, "Point", [*ATTRIBUTES, "Latitude", "Longitude"]), frame=frame
    )


def make_csv_wkt(folder: Path) -> Source:
    frame = sample_frame("Polygon", 90, seed=2)
    table = pd.DataFrame(frame.drop(columns="geometry"))
    table["WKT"] = shapely.to_wkt(frame.to_crs("EPSG:3857").geometry.values, rounding_precision=-1)
    path = folder / "parcels.csv"
    table.to_csv(path, index=False)
    params = {"converter_params": {"wkt_column": "WKT", "crs": "EPSG:3857"}, **INDEXES}
    return Source([path], params, expected_of(frame, "Polygon"), frame=frame)


def make_geojson(folder: Path) -> Source:
    frame = sample_frame("LineString", 250, seed=3)
    path = folder / "roads.geojson"
    pyogrio.write_dataframe(frame, path)
    return Source([path], {"chunk_size": 100, **INDEXES}, expected_of(frame, "LineString"), frame=frame)


def make_json(folder: Path) -> Source:
    frame = sample_frame("Polygon", 60, seed=4)
    path = folder / "parcels.geojson"
    pyogrio.write_dataframe(frame, path)
    renamed = folder / "parcels.json"
    path.rename(renamed)
    return Source([renamed], dict(INDEXES), expected_of(frame, "Polygon"), frame=frame)


def make_gpkg(folder: Path) -> Source:
    frame = sample_frame("Point", 150, seed=5)
    path = folder / "sites.gpkg"
    pyogrio.write_dataframe(frame.to_crs("EPSG:3857"), path, layer="sites")
    return Source([path], dict(INDEXES), expected_of(frame, "Point"), frame=frame)


def make_gpkg_layers(folder: Path) -> Source:
    roads, parks = sample_frame("LineString", 40, seed=6), sample_frame("Polygon", 70, seed=7)
    path = folder / "city.gpkg"
    pyogrio.write_dataframe(roads, path, layer="roads")
    pyogrio.write_dataframe(parks.to_crs("EPSG:25832"), path, layer="parks", append=True)
    params = {"converter_params": {"layer_name": "parks"}, **INDEXES}
    return Source([path], params, expected_of(parks, "Polygon"), frame=parks)


def make_kml(folder: Path, name: str = "parks.kml") -> tuple[Path, gpd.GeoDataFrame]:
    frame = sample_frame("Polygon", 30, seed=8)
    path = folder / name
    pyogrio.write_dataframe(frame, path, driver="LIBKML")
    return path, frame


def kml_fields(path: Path | str) -> list[str]:
    return [str(name) for name in pyogrio.read_info(path)["fields"]]


def make_kml_source(folder: Path) -> Source:
    path, frame = make_kml(folder)
    return Source([path], dict(INDEXES), expected_of(frame, "Polygon", kml_fields(path)), frame=frame)


def make_kmz(folder: Path) -> Source:
    path, frame = make_kml(folder, "doc.kml")
    kmz = folder / "parks.kmz"
    with zipfile.ZipFile(kmz, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, "doc.kml")
    return Source([kmz], dict(INDEXES), expected_of(frame, "Polygon", kml_fields(path)), frame=frame)


def write_shapefile(folder: Path, frame: gpd.GeoDataFrame, crs: str) -> list[Path]:
    path = folder / "parcels.shp"
    pyogrio.write_dataframe(frame.to_crs(crs), path)
    siblings = sorted(p for p in folder.iterdir() if p.stem == "parcels" and p != path)
    assert {p.suffix for p in siblings} >= {".dbf", ".shx", ".prj"}
    return [path, *siblings]


def make_shp(folder: Path) -> Source:
    frame = sample_frame("Polygon", 80, seed=9)
    return Source(
        write_shapefile(folder, frame, "EPSG:32632"),
        dict(INDEXES),
        expected_of(frame, "Polygon"),
        frame=frame,
    )


def make_zip(folder: Path) -> Source:
    frame = sample_frame("LineString", 80, seed=10)
    inner = folder / "inner"
    inner.mkdir()
    files = write_shapefile(inner, frame, "EPSG:32633")
    path = folder / "parcels.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in files:
            archive.write(member, member.name)
    return Source([path], dict(INDEXES), expected_of(frame, "LineString"), frame=frame)


def make_fgb(folder: Path) -> Source:
    frame = sample_frame("LineString", 220, seed=11)
    path = folder / "roads.fgb"
    pyogrio.write_dataframe(frame, path)
    return Source([path], {"chunk_size": 100, **INDEXES}, expected_of(frame, "LineString"), frame=frame)


def make_parquet(folder: Path) -> Source:
    frame = sample_frame("Polygon", 200, seed=12)
    path = folder / "parcels.parquet"
    frame.to_crs("EPSG:3857").to_parquet(path)
    return Source([path], {"chunk_size": 100, **INDEXES}, expected_of(frame, "Polygon"), frame=frame)


GENERATED: dict[str, Callable[[Path], Source]] = {
    "csv-latlon": make_csv_latlon,
    "csv-wkt": make_csv_wkt,
    "geojson": make_geojson,
    "json": make_json,
    "gpkg": make_gpkg,
    "gpkg-layer_name": make_gpkg_layers,
    "kml": make_kml_source,
    "kmz": make_kmz,
    "shp": make_shp,
    "zip": make_zip,
    "fgb": make_fgb,
    "parquet": make_parquet,
}


@pytest.fixture(scope="module")
def generated_jobs(api, settings, tmp_path_factory) -> dict[str, tuple[Source, Submitted]]:
    stamp = f"{time.time_ns()}"
    sources, cases = {}, {}
    for case, make in GENERATED.items():
        sources[case] = source = make(tmp_path_factory.mktemp(case))
        blob = put_source(settings, source, f"{stamp}/{case}")
        table = f"gen_{case.replace('-', '_')}_{stamp}"
        cases[case] = {"blob_name": blob, "table_name": table, **source.params}
    submitted = submit_batch(api, cases)
    return {case: (sources[case], submitted[case]) for case in GENERATED}


@pytest.mark.parametrize("case", list(GENERATED))
def test_ingest_vector_loads_generated_format(case, generated_jobs, settings, pool, wait_for_job):
    source, submitted = generated_jobs[case]
    table = submitted.table
    result = completed(wait_for_job, submitted)
    assert_result(result, table, source.expected)
    assert_published(pool, settings, table, source.expected)
    assert result["data_complete"] is True
    assert result["rows_read"] == source.expected.rows
    if source.params.get("chunk_size"):
        assert result["chunks_total"] == result["chunks_loaded"] == math.ceil(source.expected.rows / 100)
    frame = source.frame
    rows = fetch_all(pool, f'SELECT site_name, value, "count" FROM {SCHEMA}.{table} ORDER BY "count"')
    assert [r["site_name"] for r in rows] == list(frame["Site Name"])
    assert [r["count"] for r in rows] == list(frame["Count"])
    assert [r["value"] for r in rows] == pytest.approx(list(frame["Value"]), rel=1e-12)
    assert_geometries_match(pool, table, frame, order_by='"count"')


# -- the shared corpus -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusCase:
    """A corpus file to load: how to put it in the container, and which MANIFEST layer it must match."""

    file: str  # relative to the corpus, as in the MANIFEST
    params: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None  # the MANIFEST layer (and layer_name) when the file has several
    convert_to: str | None = None  # "kmz", "fgb", "parquet", "json": written from the file in the test
    assume_4326: bool = False  # the file declares no CRS; the job declares EPSG:4326


CORPUS_CASES = {
    "csv-latlon-volcano": CorpusCase(
        "vector/volcano_data_2010.csv",
        {"converter_params": {"lat_name": "Latitude", "lon_name": "Longitude"}},
    ),
    "csv-wkt": CorpusCase(
        "vector/wkt.csv", {"converter_params": {"wkt_column": "WKT", "crs": "EPSG:4326"}}, assume_4326=True
    ),
    "csv-wkt-curves": CorpusCase(
        "vector/curves_line.csv",
        {"converter_params": {"wkt_column": "WKT", "crs": "EPSG:4326"}},
        assume_4326=True,
    ),
    "geojson-rmnp": CorpusCase("vector/rmnp.geojson"),
    "geojson-null-geometry": CorpusCase("vector/null_geom.geojson"),
    "json-rmnp": CorpusCase("vector/rmnp.geojson", convert_to="json"),
    "gpkg-nulls": CorpusCase("vector/test_gpkg_nulls.gpkg"),
    "gpkg-line-zm": CorpusCase("vector/line_zm.gpkg"),
    "gpkg-layer-polygons": CorpusCase(
        "vector/test_gdal_error.gpkg", layer="cbs_arbeidsmarktregio_2014_gegeneraliseerd"
    ),
    "gpkg-layer-points": CorpusCase(
        "vector/test_gdal_error.gpkg", layer="cbs_arbeidsmarktregio_2014_labelpoint"
    ),
    "gpkg-layer-3d": CorpusCase("vector/test_dimensions.gpkg", layer="test_dimensions"),
    "kml-polygon": CorpusCase("vector/polygon.kml"),
    "kmz-polygon": CorpusCase("vector/polygon.kml", convert_to="kmz"),
    "shp-wilderness": CorpusCase("vector/coutwildrnp.shp"),
    "shp-naturalearth": CorpusCase("vector/naturalearth_lowres.shp"),
    "zip-wilderness": CorpusCase("vector/coutwildrnp.zip"),
    "zip-nybb-epsg2263": CorpusCase("vector/nybb_16a.zip"),
    "fgb-wilderness": CorpusCase("vector/coutwildrnp.shp", convert_to="fgb"),
    "parquet-naturalearth": CorpusCase("vector/naturalearth_lowres.shp", convert_to="parquet"),
}


@pytest.fixture(scope="module")
def manifest(corpus) -> dict[str, dict[str, Any]]:
    files = json.loads((corpus / "MANIFEST.json").read_text())["files"]
    return {entry["file"]: entry for entry in files}


def manifest_layer(entry: dict[str, Any], layer: str | None) -> dict[str, Any]:
    layers = entry["facts"]["layers"]
    if layer is None:
        (only,) = layers
        return only
    (chosen,) = [found for found in layers if found["name"] == layer]
    return chosen


def expected_from_manifest(facts: dict[str, Any], case: CorpusCase, fields: list[str]) -> Expected:
    families = {kind.removeprefix("Multi") for kind in facts["geometry_types"]}
    assert len(families) == 1, f"{case.file} is not a one-family layer: {facts['geometry_types']}"
    bounds = facts["bounds_native"] if case.assume_4326 else facts["bounds_4326"]
    return Expected(
        rows=facts["feature_count"] - facts["null_geometries"] - facts["empty_geometries"],
        geometry_type=f"Multi{families.pop()}",
        bounds=bounds,
        fields=fields,
    )


def corpus_source(corpus: Path, case: CorpusCase, folder: Path) -> tuple[list[Path], list[str], Path | None]:
    """The files to upload (main first), the attribute names the job will read, and the file whose
    attribute values the table must hold (None for a CSV, whose values depend on the open options)."""
    original = corpus / case.file
    if case.convert_to == "kmz":
        kmz = folder / f"{original.stem}.kmz"
        with zipfile.ZipFile(kmz, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(original, "doc.kml")
        return [kmz], kml_fields(original), original
    if case.convert_to == "json":
        renamed = folder / f"{original.stem}.json"
        shutil.copy(original, renamed)
        return [renamed], [str(f) for f in pyogrio.read_info(original)["fields"]], original
    if case.convert_to in ("fgb", "parquet"):
        frame = gpd.read_file(original, engine="pyogrio")
        converted = folder / f"{original.stem}.{case.convert_to}"
        if case.convert_to == "parquet":
            frame.to_parquet(converted)
            return [converted], source_attributes(converted).column_names, converted
        pyogrio.write_dataframe(frame, converted)
        return [converted], [str(f) for f in pyogrio.read_info(converted)["fields"]], converted
    fields = [str(f) for f in pyogrio.read_info(original, layer=case.layer)["fields"]]
    wkt = case.params.get("converter_params", {}).get("wkt_column")
    fields = [f for f in fields if f != wkt]
    siblings = sorted(p for p in original.parent.iterdir() if p.stem == original.stem and p != original)
    files = [original, *(siblings if original.suffix == ".shp" else [])]
    return files, fields, None if original.suffix == ".csv" else original


@pytest.fixture(scope="module")
def corpus_jobs(
    api, settings, corpus, manifest, tmp_path_factory
) -> dict[str, tuple[Expected, Path, Submitted]]:
    stamp = f"{time.time_ns()}"
    prepared, cases = {}, {}
    for case_id, case in CORPUS_CASES.items():
        facts = manifest_layer(manifest[case.file], case.layer)
        files, fields, values_from = corpus_source(corpus, case, tmp_path_factory.mktemp(case_id))
        expected = expected_from_manifest(facts, case, fields)
        blob = put_source(settings, Source(files, case.params, expected), f"{stamp}/{case_id}")
        params = {
            **case.params,
            "blob_name": blob,
            "table_name": f"corpus_{case_id.replace('-', '_')}_{stamp}",
        }
        if case.layer:
            params["converter_params"] = {**params.get("converter_params", {}), "layer_name": case.layer}
        prepared[case_id], cases[case_id] = (expected, values_from), params
    submitted = submit_batch(api, cases)
    return {case_id: (*prepared[case_id], submitted[case_id]) for case_id in CORPUS_CASES}


@pytest.mark.parametrize("case_id", list(CORPUS_CASES))
def test_ingest_vector_loads_corpus_file(case_id, corpus_jobs, manifest, settings, pool, wait_for_job):
    case = CORPUS_CASES[case_id]
    facts = manifest_layer(manifest[case.file], case.layer)
    expected, values_from, submitted = corpus_jobs[case_id]
    table = submitted.table
    result = completed(wait_for_job, submitted)
    assert_result(result, table, expected)
    assert_published(pool, settings, table, expected)
    assert result["rows_read"] == facts["feature_count"]
    assert result["rows_dropped_null"] == facts["null_geometries"]
    assert result["rows_dropped_empty"] == facts["empty_geometries"]
    assert result["rows_rejected"] == 0
    if values_from is not None:
        source_values = source_attributes(values_from, case.layer)
        assert_values_match(pool, table, source_values, result["renamed_columns"])


# -- values survive exactly --------------------------------------------------------------------------

FLOATS = [0.1 + 0.2, 1 / 3, 1e-300, 123456789.123456789, 5e-324, -1.7976931348623157e308, 2.0**-1074 * 3]
N_VALUES = len(FLOATS)
INTS = [2**53 - 1, -(2**40), 0, 7, None, 1, -1]
FLAGS = [True, False, None, True, False, True, False]
DAYS = [
    dt.date(2024, 2, 29),
    dt.date(1900, 1, 1),
    None,
    dt.date(2000, 1, 1),
    dt.date(1970, 1, 1),
    dt.date(9999, 12, 31),
    dt.date(1969, 12, 31),
]
STAMPS = [
    dt.datetime(2024, 2, 29, 12, 34, 56, 789000),
    dt.datetime(1969, 7, 20, 20, 17, 40),
    None,
    dt.datetime(2000, 1, 1),
    dt.datetime(1999, 12, 31, 23, 59, 59, 500000),
    dt.datetime(2038, 1, 19, 3, 14, 8),
    dt.datetime(1901, 12, 13, 20, 45, 52),
]
TEXTS = ["Zürich", "名前", None, "emoji 🗺️", "tab\there", 'quote " comma ,', "Ünïcödé ß"]
NAMES = ["a", "b", "c", None, "e", "f", "ğ"]
# Names in scripts without case whose letters carry combining vowel signs: nothing to clean.
INDIC_THAI = {"नाम": [1, 2, 3, 4, 5, 6, None], "ชื่อ": ["x", None, "y", "z", "ก", "ข", "ค"]}


def value_frame() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "key": np.arange(N_VALUES, dtype=np.int64),
            "Float Value": FLOATS,
            "Big Int": pd.array(INTS, dtype="Int64"),
            "Flag": pd.array(FLAGS, dtype="boolean"),
            "Day": pd.array(DAYS, dtype=pd.ArrowDtype(pa.date32())),
            "Stamp": pd.to_datetime(pd.Series(STAMPS)),
            "Zürich": TEXTS,
            "名前": NAMES,
            "नाम": pd.array(INDIC_THAI["नाम"], dtype="Int32"),
            "ชื่อ": INDIC_THAI["ชื่อ"],
        },
        geometry=shapely.points(np.arange(N_VALUES) * 1.5, np.arange(N_VALUES) * -2.25),
        crs="EPSG:4326",
    )


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (pd.Timestamp, dt.date)):
        return value.isoformat()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_values(folder: Path, fmt: str) -> tuple[Path, dict[str, Any]]:
    """The value frame as one file; returns it and the job's extra params."""
    frame = value_frame()
    path = folder / f"values.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path)
    elif fmt == "csv":  # pandas writes floats with repr: the shortest text that reads back exactly
        table = pd.DataFrame(frame.drop(columns="geometry"))
        table["lon"], table["lat"] = [repr(v) for v in frame.geometry.x], [repr(v) for v in frame.geometry.y]
        table.to_csv(path, index=False)
        return path, {"converter_params": {"lat_name": "lat", "lon_name": "lon"}}
    elif fmt == "geojson":  # written with json.dumps (repr floats); GDAL's writer rounds to 15 digits
        features = [
            {
                "type": "Feature",
                "properties": {k: _json_value(frame[k].iloc[i]) for k in frame.columns if k != "geometry"},
                "geometry": shapely.geometry.mapping(frame.geometry.iloc[i]),
            }
            for i in range(N_VALUES)
        ]
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, ensure_ascii=False))
    else:
        pyogrio.write_dataframe(frame, path, use_arrow=True)
    return path, {}


# FlatGeobuf has no date type: GDAL stores a date as a date-time at midnight.
DAY_TYPE = {"fgb": "timestamp without time zone"}


def _naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _day(value: dt.date | dt.datetime | None) -> dt.date | None:
    if isinstance(value, dt.datetime):
        assert value.time() == dt.time(0), value
        return value.date()
    return value


VALUE_FORMATS = ["gpkg", "parquet", "fgb", "geojson", "csv"]


@pytest.fixture(scope="module")
def value_jobs(api, settings, tmp_path_factory) -> dict[str, Submitted]:
    stamp, folder = f"{time.time_ns()}", tmp_path_factory.mktemp("values")
    cases = {}
    for fmt in VALUE_FORMATS:
        path, params = write_values(folder, fmt)
        blob = put(settings, path, f"{stamp}/values.{fmt}")
        cases[fmt] = {"blob_name": blob, "table_name": f"values_{fmt}_{stamp}", **params}
    return submit_batch(api, cases)


@pytest.mark.parametrize("fmt", VALUE_FORMATS)
def test_ingest_vector_keeps_values_exactly(fmt, value_jobs, pool, wait_for_job):
    table = value_jobs[fmt].table
    result = completed(wait_for_job, value_jobs[fmt])
    assert result["rows_loaded"] == N_VALUES

    types = table_columns(pool, table)
    assert {"zürich", "名前", "float_value", "big_int", "flag", "day", "stamp"} <= set(types), types
    assert_safe_names(pool, [n for n in types if n not in ("fid", "geom")])
    assert types["float_value"] == "double precision"
    assert types["big_int"] in ("bigint", "integer")
    assert types["flag"] == "boolean"
    assert types["day"] == DAY_TYPE.get(fmt, "date")
    assert types["stamp"] in ("timestamp without time zone", "timestamp with time zone")
    assert types["zürich"] == types["名前"] == "text"

    rows = fetch_all(
        pool,
        'SELECT key, float_value, big_int, flag, day, stamp, "zürich", "名前", '
        "ST_X(ST_GeometryN(geom, 1)) AS x, ST_Y(ST_GeometryN(geom, 1)) AS y "
        f"FROM {SCHEMA}.{table} ORDER BY key",
    )
    assert [r["key"] for r in rows] == list(range(N_VALUES))
    for row, expected in zip(rows, FLOATS, strict=True):
        assert isinstance(row["float_value"], float)
        assert row["float_value"] == expected, (row["float_value"], expected)  # bit for bit, not approx
    assert [r["big_int"] for r in rows] == INTS
    assert [r["flag"] for r in rows] == FLAGS
    assert [_day(r["day"]) for r in rows] == DAYS
    assert [_naive_utc(r["stamp"]) for r in rows] == STAMPS
    assert [r["zürich"] for r in rows] == TEXTS
    assert [r["名前"] for r in rows] == NAMES
    for name, values in INDIC_THAI.items():  # kept as they are, not cut at each vowel sign
        assert name in types, (name, [n for n in types if not n.isascii()])
        got = fetch_all(pool, f'SELECT "{name}" AS v FROM {SCHEMA}.{table} ORDER BY key')
        assert [r["v"] for r in got] == values
    assert [r["x"] for r in rows] == [i * 1.5 for i in range(N_VALUES)]
    assert [r["y"] for r in rows] == [i * -2.25 for i in range(N_VALUES)]
    assert staging_tables(pool, SCHEMA, table) == []


# -- replace and append ------------------------------------------------------------------------------


def test_ingest_vector_replaces_then_appends(api, settings, pool, wait_for_job, unique, tmp_path):
    table = f"replace_append_{unique}"
    qualified = f"{SCHEMA}.{table}"
    blobs = {}
    frames = {
        "first": sample_frame("Point", 40, seed=20, prefix="first"),
        "second": sample_frame("Point", 25, seed=21, prefix="second"),
        "third": sample_frame("Point", 10, seed=22, prefix="third"),
    }
    for name, frame in frames.items():
        path = tmp_path / f"{name}.gpkg"
        pyogrio.write_dataframe(frame, path)
        blobs[name] = put(settings, path, f"{unique}/{name}.gpkg")

    def names() -> list[str]:
        rows = fetch_all(pool, f"SELECT site_name FROM {qualified} ORDER BY fid")
        return [r["site_name"] for r in rows]

    def item() -> dict[str, Any]:
        items = pgstac.search_items(settings, COLLECTION, ids=[qualified])
        assert len(items) == 1, [i["id"] for i in items]  # replaced, never duplicated
        return items[0]

    first = run_ingest(api, wait_for_job, blob_name=blobs["first"], table_name=table, **INDEXES)
    assert first["rows_loaded"] == 40 and names() == list(frames["first"]["Site Name"])
    assert item()["properties"]["table:row_count"] == 40

    second = run_ingest(
        api, wait_for_job, blob_name=blobs["second"], table_name=table, if_exists="replace", **INDEXES
    )
    assert second["rows_loaded"] == 25
    assert names() == list(frames["second"]["Site Name"])
    replaced = item()
    assert replaced["properties"]["table:row_count"] == 25
    assert replaced["properties"]["rayetl:source"]["blob_name"] == blobs["second"]
    assert_result(second, table, expected_of(frames["second"], "Point"))
    assert_published(pool, settings, table, expected_of(frames["second"], "Point"))

    third = run_ingest(
        api, wait_for_job, blob_name=blobs["third"], table_name=table, if_exists="append", **INDEXES
    )
    assert third["rows_loaded"] == 10
    assert names() == list(frames["second"]["Site Name"]) + list(frames["third"]["Site Name"])
    (fids,) = fetch_all(pool, f"SELECT count(DISTINCT fid) AS n, count(*) AS total FROM {qualified}")
    assert fids["n"] == fids["total"] == 35
    appended = item()
    assert appended["properties"]["table:row_count"] == 35
    both = pd.concat([frames["second"], frames["third"]])
    expected = Expected(
        rows=35,
        geometry_type="MultiPoint",
        bounds=[float(v) for v in both.total_bounds],
        fields=ATTRIBUTES,
        indexed=["count"],
    )
    assert_published(pool, settings, table, expected)


def test_ingest_vector_leaves_no_staging_table_behind(pool, generated_jobs, value_jobs, wait_for_job):
    for submitted in [s for _, s in generated_jobs.values()] + list(value_jobs.values()):
        wait_for_job(submitted.job_id, timeout_s=WAIT_S)
    assert staging_tables(pool) == []  # the corpus jobs were each waited on by their test
    (row,) = fetch_all(pool, "SELECT count(*) AS n FROM rayetl.loaded_chunks")
    assert row["n"] == 0
