"""ingest_vector end to end over HTTP: real files into PostGIS, exactly once, published atomically."""

import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from conftest import wait_until

from rayetl.store import audit, pgstac, postgis

JOB = "/api/jobs/ingest_vector"


def put(settings, source: Path, name: str | None = None) -> str:
    """Copy a file into the default container; returns its blob name."""
    name = name or source.name
    target = settings.local_storage_root / settings.default_container / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return name


def submit(api, **params):
    response = api.post(JOB, json=params)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def table_rows(pool, table: str) -> int:
    with pool.connection() as conn:
        return conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]


def staging_tables(pool, schema: str = "geo") -> list[str]:
    with pool.connection() as conn:
        return postgis.list_staging_tables(conn, schema)


@pytest.fixture
def points_gpkg(tmp_path) -> Path:
    rng = np.random.default_rng(7)
    n = 5_000
    frame = gpd.GeoDataFrame(
        {"value": rng.random(n), "name": [f"p{i}" for i in range(n)]},
        geometry=shapely.points(rng.uniform(-10, 10, n), rng.uniform(40, 50, n)),
        crs="EPSG:4326",
    )
    path = tmp_path / "points.gpkg"
    pyogrio.write_dataframe(frame, path)
    return path


def test_gpkg_points_load_in_several_chunks(api, settings, pool, wait_for_job, points_gpkg, unique):
    blob = put(settings, points_gpkg, f"{unique}/points.gpkg")
    table = f"points_{unique}"
    job_id = submit(api, blob_name=blob, table_name=table, chunk_size=1000)
    job = wait_for_job(job_id, timeout_s=120)
    assert job.status == "completed", job.error
    result = job.result
    assert result["rows_loaded"] == 5_000 == table_rows(pool, f"geo.{table}")
    assert result["chunks_total"] == 5 == result["chunks_loaded"]
    assert result["geometry_type"] == "MultiPoint"
    assert staging_tables(pool) == []
    item = pgstac.get_item(settings, "system-vectors", f"geo.{table}")
    assert item["properties"]["table:row_count"] == 5_000
    assert item["assets"]["features"]["href"] == result["ogc_features_url"]
    # The URLs in the result answer: the features server lists the new table at once.
    features = api.get(result["ogc_features_url"], params={"limit": 10})
    assert features.status_code == 200, features.text
    assert features.json()["numberMatched"] == 5_000 and len(features.json()["features"]) == 10
    assert api.get(result["viewer_url"]).status_code == 200


def test_fids_are_the_features_places_in_the_source(api, settings, pool, wait_for_job, tmp_path, unique):
    """Whatever order the chunks are copied in, and with rows dropped; appends are numbered after them."""
    n = 3_000
    geometry = np.array(shapely.points(np.arange(n) % 170, 10.0), dtype=object)
    geometry[::7] = None  # dropped, so their places are gaps
    frame = gpd.GeoDataFrame({"position": np.arange(1, n + 1)}, geometry=geometry, crs="EPSG:4326")
    path = tmp_path / "holes.gpkg"
    pyogrio.write_dataframe(frame, path)
    blob, table = put(settings, path, f"{unique}/holes.gpkg"), f"holes_{unique}"

    first = wait_for_job(submit(api, blob_name=blob, table_name=table, chunk_size=400), timeout_s=120)
    appended = wait_for_job(
        submit(api, blob_name=blob, table_name=table, chunk_size=400, if_exists="append"), timeout_s=120
    )

    assert first.status == appended.status == "completed", (first.error, appended.error)
    assert first.result["chunks_total"] == 8
    with pool.connection() as conn:
        rows = conn.execute(f"SELECT fid, position FROM geo.{table} ORDER BY fid").fetchall()
    kept = n - len(range(0, n, 7))
    assert [r["fid"] for r in rows[:kept]] == [r["position"] for r in rows[:kept]]
    assert [r["position"] for r in rows[:kept]] == [i for i in range(1, n + 1) if (i - 1) % 7]
    assert [r["fid"] for r in rows[kept:]] == list(range(n + 1, n + 1 + kept))  # after the largest


def events_of(pool, job_id: str) -> list[str]:
    with pool.connection() as conn:
        return [e.event for e in audit.list_events(conn, job_id, limit=1000, offset=0)]


def open_tasks(pool, job_id: str) -> int:
    with pool.connection() as conn:
        counts = audit.count_tasks_by_status(conn, job_id)
    return counts.get("queued", 0) + counts.get("running", 0)


@pytest.mark.parametrize(
    "fault", ["crash_upload_after_commit", "crash_upload_before_commit", "crash_prepare_after_first_chunk"]
)
def test_each_chunk_is_written_exactly_once_when_a_worker_dies(
    api, settings, pool, wait_for_job, points_gpkg, unique, fault
):
    # after commit: the retry finds its chunk key and skips; before commit (mid-COPY): the
    # transaction died with the worker and the retry writes it; prepare: the re-read yields the
    # chunks again and those already handed on are dropped.
    blob = put(settings, points_gpkg, f"{unique}/points.gpkg")
    table = f"crash_{unique}"
    job_id = submit(api, blob_name=blob, table_name=table, chunk_size=1000, inject_faults=[fault])
    job = wait_for_job(job_id, timeout_s=180)
    assert job.status == "completed", job.error
    assert table_rows(pool, f"geo.{table}") == 5_000 == job.result["rows_loaded"]
    assert "task_retried" in events_of(pool, job_id)
    assert staging_tables(pool) == []


def test_a_failure_after_the_first_chunks_drops_the_staging_table(api, settings, pool, wait_for_job, unique):
    rows = ["id,lat,lon"] + [f"{i},{i % 80},{i % 170}" for i in range(3_000)] + ["3000,95.5,10"]
    blob = f"{unique}/late_error.csv"
    path = settings.local_storage_root / settings.default_container / blob
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    table = f"late_{unique}"
    job_id = submit(
        api,
        blob_name=blob,
        table_name=table,
        chunk_size=500,
        converter_params={"lat_name": "lat", "lon_name": "lon"},
    )
    job = wait_for_job(job_id, timeout_s=120)
    assert job.status == "failed"
    assert job.error.startswith("stage 'prepare'"), job.error
    assert "row 3001: latitude 95.5" in job.error, job.error  # the 3,001st feature
    assert "cleaned_up" in events_of(pool, job_id)
    assert staging_tables(pool) == []
    with pool.connection() as conn:
        assert not postgis.table_exists(conn, "geo", table)
    assert open_tasks(pool, job_id) == 0


def test_cancel_mid_load_leaves_no_table_and_no_open_task(
    api, settings, pool, wait_for_job, tmp_path, unique
):
    n = 200_000
    rng = np.random.default_rng(3)
    frame = gpd.GeoDataFrame(
        {"value": rng.random(n)}, geometry=shapely.points(rng.random(n), rng.random(n)), crs="EPSG:4326"
    )
    source = tmp_path / "many.gpkg"
    pyogrio.write_dataframe(frame, source)
    blob = put(settings, source, f"{unique}/many.gpkg")
    table = f"cancelled_{unique}"
    job_id = submit(api, blob_name=blob, table_name=table, chunk_size=500)

    def uploading():
        job = api.get(f"/api/jobs/{job_id}").json()
        return job["stage_progress"].get("upload", {}).get("completed", 0) > 0

    wait_until(uploading, timeout_s=120, what="the first chunks to be uploaded")
    response = api.post(f"/api/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    job = wait_for_job(job_id, timeout_s=60)
    assert job.status == "cancelled"
    assert open_tasks(pool, job_id) == 0
    assert "cleaned_up" in events_of(pool, job_id)
    assert staging_tables(pool) == []
    with pool.connection() as conn:
        assert not postgis.table_exists(conn, "geo", table)


def test_catalog_again_then_unpublish_reverses_the_ingest(
    api, settings, pool, wait_for_job, points_gpkg, unique
):
    blob = put(settings, points_gpkg, f"{unique}/points.gpkg")
    table = f"reversible_{unique}"
    ingest_id = submit(api, blob_name=blob, table_name=table)
    assert wait_for_job(ingest_id, timeout_s=120).status == "completed"

    response = api.post("/api/jobs/stac_catalog_vectors", json={"table_name": table})
    assert response.status_code == 202, response.text
    recatalog = wait_for_job(response.json()["job_id"])
    assert recatalog.status == "completed", recatalog.error
    found = pgstac.search_items(settings, "system-vectors", ids=[f"geo.{table}"])
    assert len(found) == 1  # replaced, never duplicated
    assert found[0]["properties"]["rayetl:source"]["job_id"] == ingest_id

    response = api.post("/api/jobs/unpublish_vector", json={"table_name": table})
    assert response.status_code == 202, response.text
    unpublished = wait_for_job(response.json()["job_id"])
    assert unpublished.status == "completed", unpublished.error
    assert unpublished.result["table_dropped"] and unpublished.result["stac_item_deleted"]
    assert unpublished.result["published_by_link"] == f"/api/jobs/{ingest_id}"
    with pool.connection() as conn:
        assert not postgis.table_exists(conn, "geo", table)
    assert pgstac.get_item(settings, "system-vectors", f"geo.{table}") is None


def test_unpublish_refuses_tables_rayetl_did_not_create_unless_forced(api, pool, wait_for_job, unique):
    table = f"foreign_{unique}"
    with pool.connection() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS geo")
        conn.execute(f"CREATE TABLE geo.{table} (id int)")
    response = api.post("/api/jobs/unpublish_vector", json={"table_name": table})
    assert response.status_code == 409, response.text
    assert "not created by rayetl" in response.json()["message"] and "force" in response.json()["message"]

    response = api.post("/api/jobs/unpublish_vector", json={"table_name": table, "force": True})
    assert response.status_code == 202, response.text
    job = wait_for_job(response.json()["job_id"])
    assert job.status == "completed", job.error
    assert job.result["table_dropped"] and job.result["published_by_job"] is None


def test_table_jobs_answer_404_for_a_missing_table(api, unique):
    for job_type in ("stac_catalog_vectors", "unpublish_vector"):
        response = api.post(f"/api/jobs/{job_type}", json={"table_name": f"missing_{unique}"})
        assert response.status_code == 404, response.text
        assert f"geo.missing_{unique}" in response.json()["message"]
