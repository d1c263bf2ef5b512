"""validate_raster end to end: HTTP API and engine → Ray → the report, or a clear failure.

Jobs cost seconds of worker start-up on a small machine: the breadth is in test_raster_inspect.py.
"""

import shutil
from pathlib import Path

import pytest
import raster_samples as samples
from conftest import CORPUS

from rayetl.actors import submission
from rayetl.pipelines.raster_params import RASTER_EXTENSIONS

JOB_TYPE = "validate_raster"
JOB = f"/api/jobs/{JOB_TYPE}"


def put_blob(settings, source: Path, blob: str) -> str:
    """Copy a file into the default container; returns its blob name."""
    target = settings.local_storage_root / settings.default_container / blob
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return blob


def job_total(api) -> int:
    return api.get("/api/jobs", params={"job_type": JOB_TYPE}).json()["total"]


def ended(api, wait_for_job, job_id: str) -> dict:
    wait_for_job(job_id, timeout_s=180)
    return api.get(f"/api/jobs/{job_id}").json()


def test_validate_raster_is_listed_with_its_stage_and_params(api):
    listed = {t["name"]: t for t in api.get("/api/job-types").json()}

    assert listed[JOB_TYPE]["stages"] == ["validate"]
    assert set(listed[JOB_TYPE]["params_schema"]["properties"]) == {"blob_name", "container_name"}


def test_validate_raster_reports_a_good_file(api, wait_for_job, settings, tmp_path, unique):
    blob = put_blob(settings, samples.dem_float32(tmp_path / "dem.tif", size=600), f"{unique}/dem.tif")

    response = api.post(JOB, json={"blob_name": blob})

    assert response.status_code == 202, response.text
    job = ended(api, wait_for_job, response.json()["job_id"])
    assert job["status"] == "completed", job["error"]
    report = job["result"]
    assert report["source"] == f"{settings.default_container}/{blob}"
    assert (report["driver"], report["width"], report["height"], report["count"]) == ("GTiff", 600, 600, 1)
    assert (report["dtypes"], report["nodata"], report["crs"], report["epsg"]) == (
        ["float32"], -9999.0, samples.UTM_CRS, 32632
    )  # fmt: skip
    assert report["kind"] == "continuous"
    assert report["recommended"]["compression"] == "deflate" and report["recommended"]["predictor"] == 3
    assert report["is_cog"] is False
    assert "The file is greater than 512xH or 512xW, but is not tiled" in report["cog_errors"]
    assert report["findings"] == []
    west, south, east, north = report["bounds_4326"]
    assert 8 < west < east < 11 and 53 < south < north < 54  # UTM 32N origin of raster_samples


def test_validate_raster_fails_a_corrupt_file_with_the_reason(api, wait_for_job, settings, tmp_path, unique):
    if CORPUS.is_dir():
        blob = put_blob(settings, CORPUS / "bad" / "corrupt.tif", f"{unique}/corrupt.tif")
    else:  # the first half of a GeoTIFF: truncated in transit
        whole = samples.rgb_uint8(tmp_path / "whole.tif").read_bytes()
        (tmp_path / "corrupt.tif").write_bytes(whole[: len(whole) // 2])
        blob = put_blob(settings, tmp_path / "corrupt.tif", f"{unique}/corrupt.tif")

    response = api.post(JOB, json={"blob_name": blob})

    assert response.status_code == 202, response.text
    job = ended(api, wait_for_job, response.json()["job_id"])
    assert job["status"] == "failed"
    assert f"'{settings.default_container}/{blob}' cannot be read as a raster: " in job["error"]
    assert "upload it again" in job["error"]
    tasks = api.get(f"/api/jobs/{job['id']}/tasks").json()["items"]
    assert [(t["task_key"], t["status"], t["attempt"]) for t in tasks] == [("validate", "failed", 1)]


def test_validate_raster_fails_a_file_that_is_not_a_raster(api, pool, wait_for_job, settings, unique):
    folder = settings.local_storage_root / settings.default_container / unique
    folder.mkdir(parents=True)
    (folder / "notes.tif").write_text("not a raster\n")

    # Through the engine directly, as `rayetl run` submits.
    done = submission.submit_job(JOB_TYPE, {"blob_name": f"{unique}/notes.tif"}, settings=settings, pool=pool)
    job = ended(api, wait_for_job, done.job.id)

    assert job["status"] == "failed"
    assert f"'{unique}/notes.tif' in container '{settings.default_container}' cannot be read" in job["error"]
    assert "not recognized as being in a supported file format" in job["error"]
    assert str(settings.local_storage_root) not in job["error"]


@pytest.mark.parametrize(
    ("params", "patterns"),
    [
        (
            {"container_name": "missing-{unique}"},
            ["unknown container 'missing-{unique}'", "Known containers:"],
        ),
        ({}, ["file '{unique}/nowhere.tif' not found in container 'bronze'"]),
    ],
)
def test_validate_raster_refuses_a_missing_container_or_file_with_404(api, unique, params, patterns):
    before = job_total(api)
    body = {"blob_name": f"{unique}/nowhere.tif", **{k: v.format(unique=unique) for k, v in params.items()}}

    response = api.post(JOB, json=body)

    assert response.status_code == 404, response.text
    assert response.json()["error"] == "NotFound"
    for pattern in patterns:
        assert pattern.format(unique=unique) in response.json()["message"]
    assert job_total(api) == before


def test_validate_raster_refuses_an_unsupported_extension_naming_the_supported_ones(api, settings, unique):
    before = job_total(api)

    response = api.post(JOB, json={"blob_name": f"{unique}/scan.png"})

    # Invalid params are 422 in this API (field by field), like ingest_vector's unsupported extension.
    assert response.status_code == 422, response.text
    body = response.json()
    assert [f["field"] for f in body["fields"]] == ["blob_name"]
    assert "extension .png is not a raster format rayetl reads" in body["message"]
    assert f"supported: {', '.join(RASTER_EXTENSIONS)}" in body["message"]
    assert job_total(api) == before
