"""ingest_vector end to end over HTTP: real files into PostGIS, exactly once, published atomically."""

import shutil
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
import geopandas as gpd
from conftest import CORPUS

from rayetl.store import pgstac

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
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE '\\_rayetl\\_stage\\_%%'",
            (schema,),
        ).fetchall()
    return [r["tablename"] for r in rows]


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
