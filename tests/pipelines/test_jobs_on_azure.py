"""Jobs on Azure containers, end to end: Azurite → Ray tasks (settings travel with the job) → results."""

import uuid
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely

from rayetl.actors import submission
from rayetl.errors import NotFound
from rayetl.store.objects import Container, open_container

LIST = "list_container_contents"
SUMMARIZE = "summarize_container"
INGEST = "ingest_vector"

THREE_POINTS = b"""{"type": "FeatureCollection", "features": [
  {"type": "Feature", "properties": {"name": "a"}, "geometry": {"type": "Point", "coordinates": [0, 0]}},
  {"type": "Feature", "properties": {"name": "b"}, "geometry": {"type": "Point", "coordinates": [1, 1]}},
  {"type": "Feature", "properties": {"name": "c"}, "geometry": {"type": "Point", "coordinates": [2, 2]}}
]}
"""
POINTS_CSV = b"id,name,latitude,longitude\n1,a,0.0,0.0\n2,b,1.0,1.0\n"


@pytest.fixture
def bronze(azure_settings) -> Container:
    return open_container(azure_settings, "az-bronze")


@pytest.fixture
def prefix() -> str:
    """A folder of its own in the shared Azure container, so tests never see each other's blobs."""
    return f"jobs-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def filled(bronze, prefix, tmp_path) -> dict[str, tuple[int, str]]:
    """Blobs of several formats under `prefix`: path → (size, format list_container_contents detects)."""
    frame = gpd.GeoDataFrame({"n": [1]}, geometry=[shapely.Point(5, 45)], crs="EPSG:4326")
    pyogrio.write_dataframe(frame, tmp_path / "one.gpkg")
    blobs = {
        f"{prefix}/vectors/three.geojson": (THREE_POINTS, "JSON"),
        f"{prefix}/vectors/one.gpkg": ((tmp_path / "one.gpkg").read_bytes(), "SQLite/GeoPackage"),
        f"{prefix}/tables/points.csv": (POINTS_CSV, "text"),
        f"{prefix}/blobs/raw.bin": (bytes([0xFF, 0xFE]) * 300, "binary"),
        f"{prefix}/empty.dat": (b"", "empty"),
    }
    for path, (data, _) in blobs.items():
        bronze.write_bytes(path, data)
    return {path: (len(data), fmt) for path, (data, fmt) in sorted(blobs.items())}


def run(job_type: str, params: dict, *, settings, pool, wait_for_job, timeout_s: float = 120):
    done = submission.submit_job(job_type, params, settings=settings, pool=pool)
    return wait_for_job(done.job.id, timeout_s=timeout_s)


def test_list_container_contents_reads_azure_blobs(
    azure_settings, pool, ray_cluster, wait_for_job, filled, prefix
):
    job = run(LIST, {"prefix": f"{prefix}/"}, settings=azure_settings, pool=pool, wait_for_job=wait_for_job)

    assert job.status == "completed", job.error
    result = job.result
    assert result["container"] == "az-bronze"  # the default container of the job's settings
    assert [(f["path"], f["size_bytes"], f["detected_format"]) for f in result["files"]] == [
        (path, size, fmt) for path, (size, fmt) in filled.items()
    ]
    assert result["total_bytes"] == sum(size for size, _ in filled.values())


def test_summarize_container_counts_azure_blobs(
    azure_settings, pool, ray_cluster, wait_for_job, filled, prefix
):
    params = {"container_name": "az-bronze", "prefix": f"{prefix}/"}
    job = run(SUMMARIZE, params, settings=azure_settings, pool=pool, wait_for_job=wait_for_job)

    assert job.status == "completed", job.error
    result = job.result
    assert (result["file_count"], result["total_bytes"]) == (
        len(filled),
        sum(size for size, _ in filled.values()),
    )
    assert result["by_extension"]["geojson"] == {"files": 1, "bytes": len(THREE_POINTS)}
    assert set(result["by_extension"]) == {"bin", "csv", "dat", "geojson", "gpkg"}
    assert result["largest"][0]["path"] == max(filled, key=lambda path: filled[path][0])


def test_a_job_on_a_missing_azure_container_fails_naming_it(azure_settings, pool, ray_cluster, wait_for_job):
    azure_name = f"missing-{uuid.uuid4().hex[:12]}"
    settings = azure_settings.model_copy(
        update={"containers": azure_settings.containers | {"az-gone": f"az://{azure_name}"}}
    )
    job = run(LIST, {"container_name": "az-gone"}, settings=settings, pool=pool, wait_for_job=wait_for_job)

    assert job.status == "failed"
    assert f"Azure container '{azure_name}' does not exist" in job.error


@pytest.fixture
def points(tmp_path) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(11)
    n = 3_000
    return gpd.GeoDataFrame(
        {"value": rng.random(n), "name": [f"p{i}" for i in range(n)]},
        geometry=shapely.points(rng.uniform(-10, 10, n), rng.uniform(40, 50, n)),
        crs="EPSG:4326",
    )


def upload_vector(bronze: Container, frame: gpd.GeoDataFrame, folder: Path, blob: str) -> str:
    """Write `frame` next to `folder/<name of blob>` and upload it (and a Shapefile's siblings)."""
    local = folder / blob.rpartition("/")[2]
    pyogrio.write_dataframe(frame, local)
    for part in sorted(folder.glob(f"{local.stem}.*")):
        bronze.put_file(part, f"{blob.rpartition('/')[0]}/{part.name}")
    return blob


@pytest.mark.parametrize("ext", ["gpkg", "shp", "geojson"])
def test_ingest_vector_loads_a_file_from_azure(
    azure_settings, pool, ray_cluster, wait_for_job, bronze, prefix, points, tmp_path, ext
):
    blob = upload_vector(bronze, points, tmp_path, f"{prefix}/points.{ext}")
    table = f"az_points_{ext}_{prefix.replace('-', '_')}"
    params = {"blob_name": blob, "table_name": table, "chunk_size": 1_000}

    job = run(INGEST, params, settings=azure_settings, pool=pool, wait_for_job=wait_for_job)

    assert job.status == "completed", job.error
    assert job.result["rows_loaded"] == 3_000 == job.result["chunks_total"] * 1_000
    with pool.connection() as conn:
        row = conn.execute(f"SELECT count(*) AS n, sum(value) AS total FROM geo.{table}").fetchone()
    assert row["n"] == 3_000
    assert row["total"] == pytest.approx(points["value"].sum())


def test_ingest_vector_of_a_missing_azure_blob_is_refused_at_submission(azure_settings, pool, prefix):
    params = {"blob_name": f"{prefix}/absent.gpkg", "table_name": "never_loaded"}
    with pytest.raises(NotFound, match=rf"file '{prefix}/absent.gpkg' not found in container 'az-bronze'"):
        submission.submit_job(INGEST, params, settings=azure_settings, pool=pool)
