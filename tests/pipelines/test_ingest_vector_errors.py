"""ingest_vector's failures over HTTP: refused at submission (nothing queued) or failed at run time
(nothing published), each with a message saying what was wrong, and no table or staging table left."""

import json
import os
import re
import shutil
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
import numpy as np
import pyogrio
import pytest
import shapely

from rayetl.store import pgstac

JOB = "/api/jobs/ingest_vector"
SCHEMA = "geo"
COLLECTION = "system-vectors"
WAIT_S = 600  # jobs of a batch run side by side on a small machine


# -- helpers -----------------------------------------------------------------------------------------


def put(settings, source: Path, blob: str) -> str:
    """Copy a file into the default container; returns its blob name."""
    target = settings.local_storage_root / settings.default_container / blob
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return blob


def write_blob(settings, blob: str, content: str | bytes) -> str:
    target = settings.local_storage_root / settings.default_container / blob
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        target.write_text(content, encoding="utf-8")
    else:
        target.write_bytes(content)
    return blob


def feature_collection(geometries: list[dict | None], **properties: list[Any]) -> str:
    features = [
        {
            "type": "Feature",
            "properties": {name: values[i] for name, values in properties.items()},
            "geometry": geometry,
        }
        for i, geometry in enumerate(geometries)
    ]
    return json.dumps({"type": "FeatureCollection", "features": features})


def point(x: float, y: float) -> dict:
    return {"type": "Point", "coordinates": [x, y]}


def square(x: float, y: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[x, y], [x + 1, y], [x + 1, y + 1], [x, y + 1], [x, y]]]}


def fetch_all(pool, query: str, params: tuple = ()) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return conn.execute(query, params).fetchall()


def table_exists(pool, table: str, schema: str = SCHEMA) -> bool:
    rows = fetch_all(pool, "SELECT to_regclass(%s) AS r", (f'"{schema}"."{table}"',))
    return rows[0]["r"] is not None


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


def job_count(api) -> int:
    response = api.get("/api/jobs", params={"job_type": "ingest_vector", "limit": 1})
    assert response.status_code == 200, response.text
    return response.json()["total"]


def assert_nothing_left(pool, settings, table: str, schema: str = SCHEMA) -> None:
    """No target table, no staging table, no STAC item."""
    assert not table_exists(pool, table, schema)
    assert staging_tables(pool, schema, table) == []
    assert pgstac.search_items(settings, COLLECTION, ids=[f"{schema}.{table}"]) == []


def assert_message(message: str, *patterns: str) -> None:
    for pattern in patterns:
        assert re.search(pattern, message, re.DOTALL), f"{pattern!r} not in: {message}"


def assert_refused(
    api, pool, settings, params: dict[str, Any], status: int, *patterns: str
) -> dict[str, Any]:
    """Submission answers `status` with a message matching every pattern; no job, nothing written."""
    before = job_count(api)
    response = api.post(JOB, json=params)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "message"}, body
    assert_message(body["message"], *patterns)
    assert job_count(api) == before  # nothing queued
    table = params.get("table_name")
    if isinstance(table, str) and re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", table):
        assert_nothing_left(pool, settings, table, params.get("schema", SCHEMA))
    assert staging_tables(pool) == []
    return body


def assert_failed(api, pool, settings, job_id: str, table: str, *patterns: str, wait_for_job) -> str:
    """The job failed with a message matching every pattern; no task left pending, nothing published."""
    job = wait_for_job(job_id, timeout_s=WAIT_S)
    assert job.status == "failed", job.result
    assert_message(job.error, *patterns)
    details = api.get(f"/api/jobs/{job_id}").json()
    assert not {"queued", "running"} & {k for k, n in details["task_counts"].items() if n}, details
    assert_nothing_left(pool, settings, table)
    return job.error


@dataclass
class Submitted:
    """A job submitted by a batch fixture; refused ones keep their answer for the test to check."""

    table: str
    params: dict[str, Any]
    response: httpx.Response

    @property
    def job_id(self) -> str:
        assert self.response.status_code == 202, self.response.text
        return self.response.json()["job_id"]


def submit_batch(api, cases: dict[str, dict[str, Any]]) -> dict[str, Submitted]:
    """Submit every case at once, so that their jobs run side by side; tests then wait on each."""
    return {
        case: Submitted(params["table_name"], params, api.post(JOB, json=params))
        for case, params in cases.items()
    }


def assert_refused_or_failed(api, pool, settings, submitted: Submitted, *patterns: str, wait_for_job) -> str:
    """Some problems show at submission (422) with some formats and at run time with others."""
    if submitted.response.status_code == 202:
        return assert_failed(
            api, pool, settings, submitted.job_id, submitted.table, *patterns, wait_for_job=wait_for_job
        )
    assert submitted.response.status_code == 422, submitted.response.text
    message = submitted.response.json()["message"]
    assert_message(message, *patterns)
    assert_nothing_left(pool, settings, submitted.table)
    return message


def points_frame(n: int = 5) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"name": [f"p{i}" for i in range(n)], "value": np.arange(n, dtype=float)},
        geometry=shapely.points(np.linspace(1, 2, n), np.linspace(40, 41, n)),
        crs="EPSG:4326",
    )


# -- refused at submission ---------------------------------------------------------------------------


def test_ingest_vector_rejects_unsupported_extension(api, pool, settings, unique):
    blob = write_blob(settings, f"{unique}/notes.txt", "lat,lon\n1,2\n")
    assert_refused(
        api,
        pool,
        settings,
        {"blob_name": blob, "table_name": f"notes_{unique}"},
        422,
        r"\.txt is not supported",
        r"geojson",
        r"gpkg",
        r"file_extension",
    )


def test_ingest_vector_rejects_corpus_gpx_as_unsupported(api, pool, settings, corpus, unique):
    blob = put(settings, corpus / "vector" / "test_gpx.gpx", f"{unique}/test_gpx.gpx")
    assert_refused(
        api,
        pool,
        settings,
        {"blob_name": blob, "table_name": f"gpx_{unique}"},
        422,
        r"\.gpx is not supported",
    )


@pytest.mark.parametrize(
    ("file_extension", "patterns"),
    [
        ("gpkg", [r"named like a \.geojson file but file_extension is 'gpkg'", r"leave file_extension out"]),
        ("xyz", [r"file_extension 'xyz' is not supported", r"geojson"]),
    ],
)
def test_ingest_vector_rejects_mismatched_file_extension(
    api, pool, settings, unique, file_extension, patterns
):
    blob = write_blob(settings, f"{unique}/points.geojson", feature_collection([point(1, 2)]))
    params = {"blob_name": blob, "table_name": f"points_{unique}", "file_extension": file_extension}
    assert_refused(api, pool, settings, params, 422, *patterns)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("table_name", "Roads"),
        ("table_name", "1roads"),
        ("table_name", "road-s"),
        ("table_name", "roads; DROP TABLE x"),
        ("table_name", "r" * 64),
        ("table_name", "_rayetl_stage_roads"),
        ("schema", "Geo"),
        ("schema", "my schema"),
    ],
)
def test_ingest_vector_rejects_invalid_identifier(api, pool, settings, unique, field, value):
    blob = write_blob(settings, f"{unique}/points.geojson", feature_collection([point(1, 2)]))
    params = {"blob_name": blob, "table_name": f"points_{unique}", field: value}
    rule = (
        "rayetl's staging tables"
        if value.startswith("_rayetl_stage_")
        else r"lower-case letters, digits and '_'"
    )
    body = assert_refused(api, pool, settings, params, 422, re.escape(field), rule)
    assert any(field in f["field"] for f in body.get("fields", [])), body


def test_ingest_vector_refuses_existing_table_with_if_exists_fail(api, pool, settings, unique):
    table = f"taken_{unique}"
    with pool.connection() as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        conn.execute(f"CREATE TABLE {SCHEMA}.{table} (keep integer)")
        conn.execute(f"INSERT INTO {SCHEMA}.{table} VALUES (1), (2)")
    blob = write_blob(settings, f"{unique}/points.geojson", feature_collection([point(1, 2)]))
    before = job_count(api)
    response = api.post(JOB, json={"blob_name": blob, "table_name": table})
    assert response.status_code == 409, response.text
    assert_message(
        response.json()["message"], rf"{SCHEMA}\.{table} already exists", r"if_exists='replace'", r"append"
    )
    assert job_count(api) == before
    rows = fetch_all(pool, f"SELECT keep FROM {SCHEMA}.{table} ORDER BY keep")
    assert [r["keep"] for r in rows] == [1, 2]  # untouched
    assert staging_tables(pool) == []


def test_ingest_vector_reports_missing_container(api, pool, settings, unique):
    container = f"nowhere-{unique}"
    params = {"container_name": container, "blob_name": "points.geojson", "table_name": f"points_{unique}"}
    assert_refused(api, pool, settings, params, 404, rf"unknown container '{container}'")


def test_ingest_vector_reports_missing_blob(api, pool, settings, unique):
    blob = f"{unique}/missing.geojson"
    params = {"blob_name": blob, "table_name": f"missing_{unique}"}
    assert_refused(
        api, pool, settings, params, 404, re.escape(repr(blob)), re.escape(repr(settings.default_container))
    )


@pytest.mark.parametrize(
    ("converter_params", "patterns"),
    [
        ({}, [r"lat_name and lon_name", r"wkt_column"]),
        ({"lat_name": "lat"}, [r"lat_name and lon_name together"]),
        ({"lat_name": "lat", "lon_name": "lon", "wkt_column": "wkt"}, [r"either wkt_column or lat_name"]),
    ],
)
def test_ingest_vector_rejects_csv_without_geometry_columns(
    api, pool, settings, unique, converter_params, patterns
):
    blob = write_blob(settings, f"{unique}/sites.csv", "name,lat,lon,wkt\na,1,2,POINT (2 1)\n")
    params = {"blob_name": blob, "table_name": f"sites_{unique}", "converter_params": converter_params}
    assert_refused(api, pool, settings, params, 422, *patterns)


def test_ingest_vector_rejects_csv_column_not_found(api, pool, settings, unique):
    blob = write_blob(settings, f"{unique}/sites.csv", "name,latitude,longitude\na,1,2\nb,3,4\n")
    params = {
        "blob_name": blob,
        "table_name": f"sites_{unique}",
        "converter_params": {"lat_name": "lat", "lon_name": "longitude"},
    }
    assert_refused(
        api,
        pool,
        settings,
        params,
        422,
        r"column 'lat' not found",
        r"columns: name, latitude, longitude",
        r"Set lat_name",
    )


def test_ingest_vector_rejects_geopackage_layers_without_layer_name(api, pool, settings, unique, tmp_path):
    path = tmp_path / "city.gpkg"
    pyogrio.write_dataframe(points_frame(), path, layer="trees")
    pyogrio.write_dataframe(points_frame(3), path, layer="benches", append=True)
    blob = put(settings, path, f"{unique}/city.gpkg")
    params = {"blob_name": blob, "table_name": f"city_{unique}"}
    assert_refused(
        api,
        pool,
        settings,
        params,
        422,
        r"'trees' \(5 features\)",
        r"'benches' \(3 features\)",
        r"layer_name",
    )
    params["converter_params"] = {"layer_name": "lamps"}
    assert_refused(api, pool, settings, params, 422, r"no layer 'lamps'", r"'trees'", r"'benches'")


def test_ingest_vector_rejects_corpus_geopackage_layers_without_layer_name(
    api, pool, settings, corpus, unique
):
    manifest = json.loads((corpus / "MANIFEST.json").read_text())
    (entry,) = [f for f in manifest["files"] if f["file"] == "vector/test_gdal_error.gpkg"]
    blob = put(settings, corpus / entry["file"], f"{unique}/test_gdal_error.gpkg")
    layers = [
        rf"'{re.escape(layer['name'])}' \({layer['feature_count']} feature"
        for layer in entry["facts"]["layers"]
    ]
    params = {"blob_name": blob, "table_name": f"cbs_{unique}"}
    assert_refused(api, pool, settings, params, 422, rf"{len(layers)} layers", *layers, r"layer_name")


def test_ingest_vector_rejects_file_over_size_limit(api, pool, settings, unique):
    target = settings.local_storage_root / settings.default_container / unique / "huge.geojson"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as handle:
        handle.write(b'{"type": "FeatureCollection", "features": []}')
    os.truncate(target, settings.max_source_bytes + 1)  # sparse: no disk used
    try:
        params = {"blob_name": f"{unique}/huge.geojson", "table_name": f"huge_{unique}"}
        assert_refused(
            api,
            pool,
            settings,
            params,
            422,
            re.escape(f"{settings.max_source_bytes + 1:,} bytes"),
            re.escape(f"{settings.max_source_bytes:,}"),
            r"RAYETL_MAX_SOURCE_BYTES",
        )
    finally:
        target.unlink()


@pytest.mark.parametrize(
    ("params", "patterns"),
    [
        ({"source_crs": "EPSG:999999"}, [r"source_crs 'EPSG:999999' is not a CRS", r"EPSG:4326"]),
        ({"source_crs": "not a crs"}, [r"source_crs 'not a crs' is not a CRS"]),
    ],
)
def test_ingest_vector_rejects_invalid_source_crs(api, pool, settings, unique, params, patterns):
    blob = write_blob(settings, f"{unique}/points.geojson", feature_collection([point(1, 2)]))
    params = {"blob_name": blob, "table_name": f"points_{unique}", **params}
    body = assert_refused(api, pool, settings, params, 422, *patterns)
    assert any(f["field"] == "source_crs" for f in body["fields"]), body


def test_ingest_vector_rejects_invalid_csv_crs(api, pool, settings, unique):
    blob = write_blob(settings, f"{unique}/sites.csv", "name,wkt\na,POINT (1 2)\n")
    params = {
        "blob_name": blob,
        "table_name": f"sites_{unique}",
        "converter_params": {"wkt_column": "wkt", "crs": "EPSG:0"},
    }
    assert_refused(api, pool, settings, params, 422, r"converter_params\.crs 'EPSG:0' is not a CRS")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tabel_name": "x"}, "tabel_name"),
        ({"converter_params": {"latitude": "y"}}, "converter_params.latitude"),
        ({"indexes": {"gist": True}}, "indexes.gist"),
    ],
)
def test_ingest_vector_rejects_unknown_field(api, pool, settings, unique, extra, field):
    blob = write_blob(settings, f"{unique}/points.geojson", feature_collection([point(1, 2)]))
    params = {"blob_name": blob, "table_name": f"points_{unique}", **extra}
    body = assert_refused(
        api, pool, settings, params, 422, re.escape(field), r"[Ee]xtra inputs are not permitted"
    )
    assert [f["field"] for f in body["fields"]] == [field], body


def test_ingest_vector_rejects_file_without_crs(api, pool, settings, unique, tmp_path):
    pyogrio.write_dataframe(points_frame(), tmp_path / "trees.shp")
    (tmp_path / "trees.prj").unlink()
    for sibling in tmp_path.iterdir():
        put(settings, sibling, f"{unique}/{sibling.name}")
    params = {"blob_name": f"{unique}/trees.shp", "table_name": f"trees_{unique}"}
    assert_refused(api, pool, settings, params, 422, r"trees\.shp", r"no CRS", r"source_crs")


def test_ingest_vector_rejects_wkt_csv_without_crs(api, pool, settings, unique):
    blob = write_blob(settings, f"{unique}/sites.csv", "name,wkt\na,POINT (1 2)\n")
    params = {"blob_name": blob, "table_name": f"sites_{unique}", "converter_params": {"wkt_column": "wkt"}}
    assert_refused(api, pool, settings, params, 422, r"no CRS", r"converter_params\.crs")


def test_ingest_vector_rejects_corpus_shapefile_without_prj(api, pool, settings, corpus, unique):
    for path in (corpus / "vector").glob("test_tin.*"):
        put(settings, path, f"{unique}/{path.name}")
    assert not (corpus / "vector" / "test_tin.prj").exists()
    params = {"blob_name": f"{unique}/test_tin.shp", "table_name": f"tin_{unique}"}
    assert_refused(api, pool, settings, params, 422, r"test_tin\.shp", r"no CRS", r"source_crs")


# A zip whose members decompress past RAYETL_MAX_UNCOMPRESSED_BYTES: a small GeoJSON and ~8.06 GiB of
# zeros, deflated with a full flush every 64 MiB so one compressed block is repeated (8 MB on disk).
_ZEROS = 64 << 20


def write_zip_bomb(path: Path, size_bytes: int, member: str, content: str) -> None:
    chunks = -(-size_bytes // _ZEROS)
    zero = bytes(_ZEROS)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(zero) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(zero) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(chunks):
        crc = zlib.crc32(zero, crc)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, content)
        # zipfile has no API to write data that is already compressed: the local header and
        # the bookkeeping writestr() does are done by hand (close() writes the zip64 directory).
        info = zipfile.ZipInfo("padding.bin", date_time=(2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = chunks * _ZEROS
        info.compress_size = len(first) + (chunks - 1) * len(repeated) + len(tail)
        info.CRC = crc
        info.header_offset = archive.fp.tell()
        archive.fp.write(info.FileHeader(zip64=True))
        archive.fp.write(first)
        for _ in range(chunks - 1):
            archive.fp.write(repeated)
        archive.fp.write(tail)
        archive.filelist.append(info)
        archive.NameToInfo[info.filename] = info
        archive.start_dir = archive.fp.tell()


def test_ingest_vector_rejects_zip_over_uncompressed_limit(api, pool, settings, unique, tmp_path):
    started = time.monotonic()
    path = tmp_path / "bomb.zip"
    write_zip_bomb(
        path, settings.max_uncompressed_bytes + 1, "points.geojson", feature_collection([point(1, 2)])
    )
    assert time.monotonic() - started < 60
    assert path.stat().st_size < settings.max_source_bytes
    with zipfile.ZipFile(path) as archive:
        unzipped = sum(info.file_size for info in archive.infolist())
        assert unzipped > settings.max_uncompressed_bytes
        assert archive.read("points.geojson")
    blob = put(settings, path, f"{unique}/bomb.zip")
    params = {"blob_name": blob, "table_name": f"bomb_{unique}"}
    assert_refused(
        api,
        pool,
        settings,
        params,
        422,
        re.escape(f"decompresses to {unzipped:,} bytes"),
        re.escape(f"{settings.max_uncompressed_bytes:,}"),
        r"RAYETL_MAX_UNCOMPRESSED_BYTES",
    )


# -- refused or failed at run time: generated files ------------------------------------------------


def _write_truncated_gpkg(folder: Path) -> Path:
    n = 2_000
    rng = np.random.default_rng(3)
    frame = gpd.GeoDataFrame(
        {"name": [f"feature {i}" for i in range(n)]},
        geometry=shapely.buffer(shapely.points(rng.uniform(0, 10, n), rng.uniform(40, 50, n)), 0.01),
        crs="EPSG:4326",
    )
    full = folder / "full.gpkg"
    pyogrio.write_dataframe(frame, full)
    data = full.read_bytes()
    cut = folder / "truncated.gpkg"
    cut.write_bytes(data[: len(data) // 2])
    return cut


ROWS = [("a", 10.0, 20.0), ("b", 11.0, 21.0), ("c", 95.0, 22.0), ("d", 12.0, 23.0), ("e", 13.0, 200.0)]
WKT_ROWS = [
    (1, "POINT (1 2)"),
    (2, "POINT (1 2"),
    (3, "POINT (3 4)"),
    (4, "NOT WKT AT ALL"),
    (5, "POINT (5 6)"),
    (6, "MULTIPOINT ((7 8), (9 10))"),
]


LATE_WKT_ROWS = [(i, "POINT (1 2" if i == 250 else f"POINT ({i % 90} 1)") for i in range(1, 301)]


def _csv(rows: list[tuple], header: str) -> str:
    lines = [header] + [",".join(f'"{v}"' if isinstance(v, str) else repr(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def runtime_jobs(api, settings, tmp_path_factory) -> dict[str, Submitted]:
    """Jobs whose problem shows once the file is read, submitted together so they run side by side."""
    folder = tmp_path_factory.mktemp("runtime")
    stamp = f"{time.time_ns()}"
    blobs = {
        "empty": write_blob(settings, f"{stamp}/empty.geojson", feature_collection([])),
        "null": write_blob(
            settings, f"{stamp}/nulls.geojson", feature_collection([None, None, None], name=["a", "b", "c"])
        ),
        "range": write_blob(settings, f"{stamp}/range.csv", _csv(ROWS, "name,lat,lon")),
        "wkt": write_blob(settings, f"{stamp}/wkt.csv", _csv(WKT_ROWS, "id,wkt")),
        "mixed": write_blob(
            settings,
            f"{stamp}/mixed.geojson",
            feature_collection(
                [point(1, 1), square(2, 2), point(3, 3), square(4, 4), point(5, 5)], name=list("abcde")
            ),
        ),
        "truncated": put(settings, _write_truncated_gpkg(folder), f"{stamp}/truncated.gpkg"),
        # Problems past the first chunk: earlier chunks are already in the staging table.
        "mixed-late": write_blob(
            settings,
            f"{stamp}/mixed_late.geojson",
            feature_collection(
                [point(i % 50, 1) for i in range(150)] + [square(i % 50, 2) for i in range(150)]
            ),
        ),
        "wkt-late": write_blob(settings, f"{stamp}/wkt_late.csv", _csv(LATE_WKT_ROWS, "id,wkt")),
    }
    cases = {
        "empty": {"blob_name": blobs["empty"]},
        "null": {"blob_name": blobs["null"]},
        "range": {"blob_name": blobs["range"], "converter_params": {"lat_name": "lat", "lon_name": "lon"}},
        "wkt-fail": {
            "blob_name": blobs["wkt"],
            "converter_params": {"wkt_column": "wkt", "crs": "EPSG:4326"},
        },
        "wkt-skip": {
            "blob_name": blobs["wkt"],
            "converter_params": {"wkt_column": "wkt", "crs": "EPSG:4326", "on_invalid": "skip"},
        },
        "mixed": {"blob_name": blobs["mixed"]},
        "truncated": {"blob_name": blobs["truncated"]},
        "mixed-late": {"blob_name": blobs["mixed-late"], "chunk_size": 100},
        "wkt-late": {
            "blob_name": blobs["wkt-late"],
            "chunk_size": 100,
            "converter_params": {"wkt_column": "wkt", "crs": "EPSG:4326"},
        },
    }
    for case, params in cases.items():
        params["table_name"] = f"rt_{case.replace('-', '_')}_{stamp}"
    return submit_batch(api, cases)


def test_ingest_vector_reports_zero_features(api, pool, settings, runtime_jobs, wait_for_job):
    assert_refused_or_failed(
        api,
        pool,
        settings,
        runtime_jobs["empty"],
        r"empty\.geojson",
        r"zero features",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_reports_every_geometry_null(api, pool, settings, runtime_jobs, wait_for_job):
    assert_refused_or_failed(
        api,
        pool,
        settings,
        runtime_jobs["null"],
        r"nulls\.geojson",
        r"every feature dropped",
        r"null geometries \(3 of 3\)",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_reports_coordinates_out_of_range(api, pool, settings, runtime_jobs, wait_for_job):
    submitted = runtime_jobs["range"]
    assert_failed(
        api,
        pool,
        settings,
        submitted.job_id,
        submitted.table,
        r"range\.csv",
        r"2 row\(s\) cannot be loaded",
        r"row 3: latitude 95\.0 is outside \[-90, 90\]",
        r"row 5: longitude 200\.0 is outside \[-180, 180\]",
        r"on_invalid='skip'",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_reports_unparsable_wkt(api, pool, settings, runtime_jobs, wait_for_job):
    submitted = runtime_jobs["wkt-fail"]
    assert_failed(
        api,
        pool,
        settings,
        submitted.job_id,
        submitted.table,
        r"wkt\.csv",
        r"2 row\(s\) cannot be loaded",
        r"row 2: unparsable WKT 'POINT \(1 2'",
        r"row 4: unparsable WKT 'NOT WKT AT ALL'",
        r"on_invalid='skip'",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_skips_unparsable_wkt_when_asked(api, pool, settings, runtime_jobs, wait_for_job):
    submitted = runtime_jobs["wkt-skip"]
    job = wait_for_job(submitted.job_id, timeout_s=WAIT_S)
    assert job.status == "completed", job.error
    result = job.result
    assert result["rows_read"] == len(WKT_ROWS)
    assert result["rows_loaded"] == 4
    assert result["rows_rejected"] == 2
    assert [r["row"] for r in result["rejected_rows"]] == [2, 4]
    assert all("unparsable WKT" in r["reason"] for r in result["rejected_rows"]), result["rejected_rows"]
    rows = fetch_all(pool, f"SELECT id, ST_AsText(geom) AS wkt FROM {SCHEMA}.{submitted.table} ORDER BY id")
    assert [r["id"] for r in rows] == [1, 3, 5, 6]
    assert rows[0]["wkt"] == "MULTIPOINT((1 2))"
    assert staging_tables(pool, SCHEMA, submitted.table) == []
    (item,) = pgstac.search_items(settings, COLLECTION, ids=[f"{SCHEMA}.{submitted.table}"])
    assert item["properties"]["table:row_count"] == 4


def test_ingest_vector_reports_mixed_geometry_families(api, pool, settings, runtime_jobs, wait_for_job):
    submitted = runtime_jobs["mixed"]
    assert_failed(
        api,
        pool,
        settings,
        submitted.job_id,
        submitted.table,
        r"mixed\.geojson mixes geometry families",
        r"Point: 3",
        r"Polygon: 2",
        r"split the file",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_reports_mixed_families_after_first_chunk(
    api, pool, settings, runtime_jobs, wait_for_job
):
    submitted = runtime_jobs["mixed-late"]
    assert_failed(
        api,
        pool,
        settings,
        submitted.job_id,
        submitted.table,
        r"mixed_late\.geojson mixes geometry families",
        r"rows 101-200",
        r"Polygon: \d+",
        r"earlier chunks held MultiPoint",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_reports_unparsable_wkt_after_first_chunk(
    api, pool, settings, runtime_jobs, wait_for_job
):
    submitted = runtime_jobs["wkt-late"]
    assert_failed(
        api,
        pool,
        settings,
        submitted.job_id,
        submitted.table,
        r"wkt_late\.csv",
        r"1 row\(s\) cannot be loaded",
        r"row 250: unparsable WKT 'POINT \(1 2'",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_reports_truncated_geopackage(api, pool, settings, runtime_jobs, wait_for_job):
    assert_refused_or_failed(
        api,
        pool,
        settings,
        runtime_jobs["truncated"],
        r"truncated\.gpkg",
        r"cannot be read|truncated or corrupt|malformed",
        wait_for_job=wait_for_job,
    )


# -- refused or failed at run time: corpus files ---------------------------------------------------


@dataclass(frozen=True)
class BadCorpusFile:
    file: str
    params: dict[str, Any]


BAD_CORPUS = {
    "truncated-kml": BadCorpusFile("bad/truncated.kml", {}),
    "broken-gpkg": BadCorpusFile("bad/test_broken_geopackage.gpkg", {}),
    "empty-kml": BadCorpusFile("bad/empty.kml", {}),
    "bad-kml": BadCorpusFile("bad/bad.kml", {}),
    "null-gpkg": BadCorpusFile("vector/test_geometry_null.gpkg", {}),
    "empty-geometries-gpkg": BadCorpusFile("vector/test_geometry_empty.gpkg", {}),
    "mixed-geojson": BadCorpusFile("vector/trio.geojson", {}),
    "mixed-kml": BadCorpusFile("vector/styles.kml", {}),
    "mixed-kmz": BadCorpusFile("vector/styles.kmz", {}),
    "point-in-polygon-layer": BadCorpusFile("vector/test_geometry_valid.gpkg", {}),
    "point-in-polygon-layer-skip": BadCorpusFile(
        "vector/test_geometry_valid.gpkg", {"converter_params": {"on_invalid": "skip"}}
    ),
    "tin-with-source-crs": BadCorpusFile("vector/test_tin.shp", {"source_crs": "EPSG:4326"}),
}


@pytest.fixture(scope="module")
def manifest(corpus) -> dict[str, dict[str, Any]]:
    return {entry["file"]: entry for entry in json.loads((corpus / "MANIFEST.json").read_text())["files"]}


@pytest.fixture(scope="module")
def corpus_jobs(api, settings, corpus) -> dict[str, Submitted]:
    stamp = f"{time.time_ns()}"
    cases = {}
    for case, bad in BAD_CORPUS.items():
        source = corpus / bad.file
        folder = f"{stamp}/{case}"
        siblings = source.parent.glob(f"{source.stem}.*") if source.suffix == ".shp" else [source]
        for path in siblings:
            put(settings, path, f"{folder}/{path.name}")
        table = f"bad_{case.replace('-', '_')}_{stamp}"
        cases[case] = {"blob_name": f"{folder}/{source.name}", "table_name": table, **bad.params}
    return submit_batch(api, cases)


def only_layer(manifest, file: str) -> dict[str, Any]:
    layers = [layer for layer in manifest[file]["facts"]["layers"] if layer["feature_count"]]
    (layer,) = layers
    return layer


@pytest.mark.parametrize("case", ["truncated-kml", "broken-gpkg"])
def test_ingest_vector_reports_corrupt_corpus_file(
    api, pool, settings, corpus_jobs, manifest, case, wait_for_job
):
    name = Path(BAD_CORPUS[case].file).name
    assert "open_error" in manifest[BAD_CORPUS[case].file]["facts"]
    assert_refused_or_failed(
        api,
        pool,
        settings,
        corpus_jobs[case],
        re.escape(name),
        r"cannot be read|truncated or corrupt",
        r"re-export or re-upload",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_reports_corpus_kml_without_features(
    api, pool, settings, corpus_jobs, manifest, wait_for_job
):
    assert manifest["bad/empty.kml"]["facts"]["layer_count"] == 0
    assert_refused_or_failed(
        api,
        pool,
        settings,
        corpus_jobs["empty-kml"],
        r"empty\.kml",
        r"zero features",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_reports_corpus_kml_with_unrepairable_polygon(
    api, pool, settings, corpus_jobs, manifest, wait_for_job
):
    layer = only_layer(manifest, "bad/bad.kml")
    assert layer["invalid_geometries"] == layer["feature_count"]
    assert_refused_or_failed(
        api,
        pool,
        settings,
        corpus_jobs["bad-kml"],
        r"bad\.kml",
        rf"{layer['invalid_geometries']} row\(s\) cannot be loaded",
        r"row 1: invalid Polygon",
        wait_for_job=wait_for_job,
    )


@pytest.mark.parametrize(
    ("case", "dropped", "label"),
    [("null-gpkg", "null_geometries", "null"), ("empty-geometries-gpkg", "empty_geometries", "empty")],
)
def test_ingest_vector_reports_corpus_file_whose_features_all_drop(
    api, pool, settings, corpus_jobs, manifest, case, dropped, label, wait_for_job
):
    file = BAD_CORPUS[case].file
    layer = only_layer(manifest, file)
    assert layer[dropped] == layer["feature_count"]
    assert_refused_or_failed(
        api,
        pool,
        settings,
        corpus_jobs[case],
        re.escape(Path(file).name),
        r"every feature dropped",
        rf"{label} geometries \({layer[dropped]} of {layer['feature_count']}\)",
        wait_for_job=wait_for_job,
    )


@pytest.mark.parametrize("case", ["mixed-geojson", "mixed-kml", "mixed-kmz"])
def test_ingest_vector_reports_corpus_mixed_geometry_families(
    api, pool, settings, corpus_jobs, manifest, case, wait_for_job
):
    file = BAD_CORPUS[case].file
    layer = only_layer(manifest, file)
    error = assert_refused_or_failed(
        api,
        pool,
        settings,
        corpus_jobs[case],
        re.escape(Path(file).name),
        r"mixes geometry families",
        r"split the file",
        wait_for_job=wait_for_job,
    )
    counts = {kind: int(n) for kind, n in re.findall(r"(\w+): (\d+)", error)}
    assert set(layer["geometry_types"]) <= set(counts), (layer["geometry_types"], error)
    assert sum(counts[kind] for kind in layer["geometry_types"]) == layer["feature_count"]


def test_ingest_vector_reports_point_in_polygon_layer(
    api, pool, settings, corpus_jobs, manifest, wait_for_job
):
    layer = only_layer(manifest, "vector/test_geometry_valid.gpkg")
    assert set(layer["geometry_types"]) == {"Point", "Polygon"}
    assert_refused_or_failed(
        api,
        pool,
        settings,
        corpus_jobs["point-in-polygon-layer"],
        r"test_geometry_valid\.gpkg",
        r"1 row\(s\) cannot be loaded",
        r"a Point in a layer of Polygon geometries",
        r"on_invalid='skip'",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_skips_point_in_polygon_layer_when_asked(
    api, pool, settings, corpus_jobs, manifest, wait_for_job
):
    layer = only_layer(manifest, "vector/test_geometry_valid.gpkg")
    submitted = corpus_jobs["point-in-polygon-layer-skip"]
    job = wait_for_job(submitted.job_id, timeout_s=WAIT_S)
    assert job.status == "completed", job.error
    result = job.result
    assert result["rows_read"] == layer["feature_count"]
    assert result["rows_rejected"] == 1
    assert "a Point in a layer of Polygon geometries" in result["rejected_rows"][0]["reason"]
    assert result["geometries_repaired"] == layer["invalid_geometries"]
    assert result["rows_loaded"] == layer["feature_count"] - 1
    rows = fetch_all(
        pool,
        f"SELECT count(*) AS n, bool_and(ST_IsValid(geom)) AS valid, "
        f"bool_and(GeometryType(geom) = 'MULTIPOLYGON') AS multi FROM {SCHEMA}.{submitted.table}",
    )
    assert rows == [{"n": layer["feature_count"] - 1, "valid": True, "multi": True}]
    assert staging_tables(pool, SCHEMA, submitted.table) == []


def test_ingest_vector_reports_unsupported_tin_geometries(
    api, pool, settings, corpus_jobs, manifest, wait_for_job
):
    assert "Unknown WKB type 16" in manifest["vector/test_tin.shp"]["facts"]["layers"][0]["read_error"]
    assert_refused_or_failed(
        api,
        pool,
        settings,
        corpus_jobs["tin-with-source-crs"],
        r"test_tin\.shp",
        r"TIN geometries are not supported",
        r"convert them",
        wait_for_job=wait_for_job,
    )


def test_ingest_vector_leaves_no_staging_table_behind(pool, runtime_jobs, wait_for_job):
    for submitted in runtime_jobs.values():  # every batch job has ended (the corpus ones were waited on)
        if submitted.response.status_code == 202:
            wait_for_job(submitted.job_id, timeout_s=WAIT_S)
    assert staging_tables(pool) == []
    (row,) = fetch_all(pool, "SELECT count(*) AS n FROM rayetl.loaded_chunks")
    assert row["n"] == 0
