"""stac_catalog_container end to end: files in a local container → Ray tasks → items in pgstac."""

import shutil
from collections import Counter

import pytest
from raster_samples import categorical_uint8, dem_float32, rgb_uint8

from rayetl.actors import submission
from rayetl.errors import NotFound
from rayetl.pipelines.raster_stac import raster_item_id
from rayetl.store import audit, pgstac

JOB = "stac_catalog_container"


@pytest.fixture
def container(settings, unique):
    """An empty local container with a unique name; removed afterwards."""
    name = f"stac-{unique}"
    folder = settings.local_storage_root / name
    folder.mkdir(parents=True)
    yield name, folder
    shutil.rmtree(folder, ignore_errors=True)


def run(settings, pool, wait_for_job, params: dict):
    """Submit through the engine and wait for the job to end; returns its record."""
    submitted = submission.submit_job(JOB, params, settings=settings, pool=pool)
    assert not submitted.idempotent
    return wait_for_job(submitted.job.id, timeout_s=120)


def tasks_by_stage(pool, job_id: str) -> Counter:
    with pool.connection() as conn:
        return Counter(t.stage for t in audit.list_tasks(conn, job_id, limit=1000))


def test_catalogs_rasters_reports_the_unreadable_one_and_rerun_replaces(
    settings, pool, ray_cluster, wait_for_job, container, unique
):
    name, folder = container
    rasters = ["a/dem.tif", "a/rgb.tif", "b/classes.TIF"]
    dem_float32(folder / rasters[0], size=32)
    rgb_uint8(folder / rasters[1], size=32)
    categorical_uint8(folder / rasters[2], size=32)
    (folder / "b/broken.tif").write_bytes(b"not a TIFF at all")
    (folder / "b/notes.csv").write_text("not a raster\n")  # filtered out by extension
    collection_id = f"rasters-{unique}"
    params = {"container_name": name, "collection_id": collection_id}

    job = run(settings, pool, wait_for_job, params)

    assert job.status == "completed", job.error
    result = job.result
    assert (result["file_count"], result["item_count"], result["failed_count"]) == (4, 3, 1)
    assert [f["path"] for f in result["failed"]] == ["b/broken.tif"]
    assert result["failed"][0]["error"].startswith("b/broken.tif: cannot read the raster")
    assert result["message"] == (
        f"3 items written to collection '{collection_id}' from 4 files in container '{name}'; "
        "1 could not be read (see failed)"
    )
    assert tasks_by_stage(pool, job.id) == {"list": 1, "extract": 4, "load": 1}
    found = pgstac.search_items(settings, collection_id)
    assert sorted(f["id"] for f in found) == sorted(raster_item_id(name, p) for p in rasters)
    by_path = {f["properties"]["rayetl:source"]["path"]: f for f in found}
    asset = by_path["a/dem.tif"]["assets"]["data"]
    assert asset["href"] == (folder / "a/dem.tif").as_uri()
    assert asset["file:size"] == (folder / "a/dem.tif").stat().st_size
    assert asset["file:checksum"].startswith("1220")
    assert by_path["a/dem.tif"]["properties"]["rayetl:source"]["job_id"] == job.id
    extent = pgstac.get_collection(settings, collection_id)["extent"]
    assert extent["spatial"]["bbox"] == [pytest.approx(b) for b in result["extent"]["spatial"]["bbox"]]
    west, south, east, north = extent["spatial"]["bbox"][0]
    assert 8 < west < east < 10 and 53 < south < north < 54  # UTM 32N near 9°E, 53.2°N

    # A new job over the same files (another batch size) replaces the items: none is duplicated.
    again = run(settings, pool, wait_for_job, params | {"batch_size": 2})

    assert again.status == "completed", again.error
    assert again.result["item_count"] == 3
    assert tasks_by_stage(pool, again.id) == {"list": 1, "extract": 4, "load": 2}
    found_again = pgstac.search_items(settings, collection_id)
    assert sorted(f["id"] for f in found_again) == sorted(f["id"] for f in found)
    assert {f["properties"]["rayetl:source"]["job_id"] for f in found_again} == {again.id}


def test_fails_when_no_raster_can_be_read(settings, pool, ray_cluster, wait_for_job, container, unique):
    name, folder = container
    (folder / "one.tif").write_bytes(b"garbage")
    (folder / "two.tiff").write_bytes(b"")
    collection_id = f"rasters-bad-{unique}"

    job = run(settings, pool, wait_for_job, {"container_name": name, "collection_id": collection_id})

    assert job.status == "failed"
    assert f"none of the 2 rasters in container '{name}' could be read: one.tif: " in job.error
    assert "two.tiff: cannot read the raster" in job.error
    assert pgstac.get_collection(settings, collection_id) is None


def test_no_matching_file_completes_with_that_message(settings, pool, ray_cluster, wait_for_job, container):
    name, folder = container
    rgb_uint8(folder / "rasters/rgb.tif", size=16)

    job = run(settings, pool, wait_for_job, {"container_name": name, "prefix": "elsewhere/"})

    assert job.status == "completed", job.error
    assert job.result["message"] == f"no files matched in container '{name}' under 'elsewhere/'"
    assert (job.result["file_count"], job.result["item_count"], job.result["failed"]) == (0, 0, [])
    assert job.stage_progress["extract"].status == "skipped"
    assert job.stage_progress["load"].status == "skipped"


def test_unknown_container_is_not_found_before_any_job(settings, pool, unique):
    with pytest.raises(NotFound, match=f"unknown container 'missing-{unique}'"):
        submission.submit_job(JOB, {"container_name": f"missing-{unique}"}, settings=settings, pool=pool)
