"""list_container_contents and summarize_container end to end: HTTP API → Ray cluster → files on disk."""

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import CORPUS, wait_until
from rasterio.transform import from_origin

from rayetl.actors import submission
from rayetl.store import audit

LIST = "list_container_contents"
SUMMARIZE = "summarize_container"

THREE_POINTS = """{"type": "FeatureCollection", "features": [
  {"type": "Feature", "properties": {"name": "a"}, "geometry": {"type": "Point", "coordinates": [0, 0]}},
  {"type": "Feature", "properties": {"name": "b"}, "geometry": {"type": "Point", "coordinates": [1, 1]}},
  {"type": "Feature", "properties": {"name": "c"}, "geometry": {"type": "Point", "coordinates": [2, 2]}}
]}
"""
POINTS_CSV = "id,name,latitude,longitude\n1,a,0.0,0.0\n2,b,1.0,1.0\n3,c,2.0,2.0\n"
BLOB_SIZES = [300, 120, 950, 40, 610, 75]

# The generated files, and the format detect_format names from their first bytes.
GENERATED_FORMATS = {
    "empty.dat": "empty",
    "rasters/SCAN.TIF": "GeoTIFF/TIFF",
    "rasters/small.tif": "GeoTIFF/TIFF",
    "tables/README": "text",
    "tables/points.csv": "text",
    "vectors/three.geojson": "JSON",
} | {f"blobs/blob-{i}.bin": "binary" for i in range(len(BLOB_SIZES))}
# Corpus file → (its path in a container, the format detected).
CORPUS_FILES = {
    "vector/rmnp.geojson": ("corpus/rmnp.geojson", "JSON"),
    "raster/byte.tif": ("corpus/byte.tif", "GeoTIFF/TIFF"),
    "vector/test_gpkg_nulls.gpkg": ("corpus/test_gpkg_nulls.gpkg", "SQLite/GeoPackage"),
}


def write_geotiff(path: Path, size: int) -> None:
    """A single-band uint8 GeoTIFF of size × size pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.arange(size * size) % 251).astype("uint8").reshape(1, size, size)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:4326",
        "transform": from_origin(10.0, 50.0, 0.01, 0.01),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def fill_generated(folder: Path) -> None:
    """The files of GENERATED_FORMATS: small, in sub-folders, and one empty file at the root."""
    write_bytes(folder / "vectors/three.geojson", THREE_POINTS.encode())
    write_bytes(folder / "tables/points.csv", POINTS_CSV.encode())
    write_bytes(folder / "tables/README", b"a file without an extension\n")
    write_geotiff(folder / "rasters/small.tif", 64)
    write_geotiff(folder / "rasters/SCAN.TIF", 16)
    (folder / "empty.dat").touch()
    for i, size in enumerate(BLOB_SIZES):  # not UTF-8, and more files than `largest` keeps
        write_bytes(folder / f"blobs/blob-{i}.bin", bytes([0xFF - i]) * size)


def copy_corpus_files(corpus: Path, folder: Path) -> dict[str, int]:
    """Copy CORPUS_FILES into folder; returns their sizes according to the corpus MANIFEST."""
    manifest = {entry["file"]: entry for entry in json.loads((corpus / "MANIFEST.json").read_text())["files"]}
    sizes = {}
    for source, (target, _) in CORPUS_FILES.items():
        assert source in manifest, f"{source} is not in the corpus MANIFEST"
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / source, folder / target)
        sizes[target] = manifest[source]["bytes"]
    return sizes


def files_on_disk(root: Path) -> dict[str, int]:
    """Relative path → size of every file under root, sorted by path: what the jobs must report."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = Path(folder) / name
            found[full.relative_to(root).as_posix()] = full.stat().st_size
    return dict(sorted(found.items()))


def submit(api, job_type: str, params: dict) -> str:
    response = api.post(f"/api/jobs/{job_type}", json=params)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def completed(api, wait_for_job, job_id: str) -> dict:
    """Wait until the job ends; it must have completed. Returns it as GET /api/jobs/{id} shows it."""
    wait_for_job(job_id)
    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed", job["error"]
    return job


def run_job(api, wait_for_job, job_type: str, params: dict) -> dict:
    return completed(api, wait_for_job, submit(api, job_type, params))


def job_total(api, job_type: str) -> int:
    response = api.get("/api/jobs", params={"job_type": job_type})
    assert response.status_code == 200, response.text
    return response.json()["total"]


@pytest.fixture
def new_container(settings, unique):
    """Makes empty local containers with unique names; removes them afterwards."""
    made = []

    def make(label: str) -> tuple[str, Path]:
        name = f"{label}-{unique}-{len(made)}"
        folder = settings.local_storage_root / name
        folder.mkdir(parents=True)
        made.append(folder)
        return name, folder

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(settings) -> tuple[str, Path]:
    """A container that no test changes: the generated files, plus corpus files when present.

    Each job costs a few seconds of worker start-up on a small machine, so the tests that only
    read a container share this one instead of filling their own.
    """
    name = f"shared-{time.time_ns()}"
    folder = settings.local_storage_root / name
    fill_generated(folder)
    if CORPUS.is_dir():
        copy_corpus_files(CORPUS, folder)
    yield name, folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def listing(api, pool, shared) -> dict:
    """One listing of the whole shared container, read by several tests."""
    job_id = submit(api, LIST, {"container_name": shared[0]})

    def ended():
        with pool.connection() as conn:
            return audit.get_job(conn, job_id).status.is_terminal

    wait_until(ended, timeout_s=60, what=f"job {job_id[:12]} to end")
    job = api.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "completed", job["error"]
    return job


# -- list_container_contents --------------------------------------------------------------------


def test_listing_reports_every_file_with_its_size(shared, listing):
    name, folder = shared
    on_disk = files_on_disk(folder)

    result = listing["result"]

    assert result["container"] == name
    assert result["file_count"] == len(on_disk)
    assert result["total_bytes"] == sum(on_disk.values())
    assert [(f["path"], f["size_bytes"]) for f in result["files"]] == list(on_disk.items())
    assert result["message"] == f"{len(on_disk)} files in container '{name}'"


def test_listing_detects_format_from_leading_bytes(listing):
    by_path = {f["path"]: f for f in listing["result"]["files"]}

    assert {path: by_path[path]["detected_format"] for path in GENERATED_FORMATS} == GENERATED_FORMATS
    assert (by_path["rasters/SCAN.TIF"]["extension"], by_path["tables/README"]["extension"]) == ("tif", "")
    assert by_path["rasters/small.tif"]["media_type"] == "image/tiff"


def test_listing_detects_formats_of_corpus_files(listing, corpus):
    by_path = {f["path"]: f for f in listing["result"]["files"]}

    for source, (target, detected_format) in CORPUS_FILES.items():
        assert by_path[target]["detected_format"] == detected_format, source
        assert by_path[target]["size_bytes"] == (corpus / source).stat().st_size, source


def test_listing_runs_one_list_task_and_one_metadata_task_per_file(api, shared, listing):
    file_count = len(files_on_disk(shared[1]))

    tasks = api.get(f"/api/jobs/{listing['id']}/tasks").json()

    assert tasks["total"] == 1 + file_count
    assert Counter(t["stage"] for t in tasks["items"]) == {"list": 1, "metadata": file_count}
    assert [t["task_key"] for t in tasks["items"]] == ["list"] + [f"file-{i}" for i in range(file_count)]
    assert {t["status"] for t in tasks["items"]} == {"completed"}
    assert listing["stage_progress"]["metadata"] == {
        "status": "completed", "total": file_count, "completed": file_count, "failed": 0, "retried": 0
    }  # fmt: skip


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("rasters/", ["rasters/SCAN.TIF", "rasters/small.tif"]),
        ("rasters/sm", ["rasters/small.tif"]),  # a string prefix, as in blob stores
    ],
)
def test_listing_keeps_only_paths_under_the_prefix(api, wait_for_job, shared, prefix, expected):
    name, folder = shared

    result = run_job(api, wait_for_job, LIST, {"container_name": name, "prefix": prefix})["result"]

    assert [f["path"] for f in result["files"]] == expected
    assert result["prefix"] == prefix
    assert result["total_bytes"] == sum((folder / path).stat().st_size for path in expected)
    assert result["message"] == f"{len(expected)} files in container '{name}' under '{prefix}'"


def test_listing_matches_extensions_case_insensitively_with_or_without_dot(api, wait_for_job, shared):
    name, _ = shared

    job = run_job(api, wait_for_job, LIST, {"container_name": name, "extensions": [".TIF", "csv"]})

    assert job["params"]["extensions"] == ["csv", "tif"]
    paths = [f["path"] for f in job["result"]["files"]]
    assert [p for p in paths if not p.startswith("corpus/")] == [
        "rasters/SCAN.TIF", "rasters/small.tif", "tables/points.csv"
    ]  # fmt: skip
    # Other spellings of the same extensions are the same job.
    for spelling in (["tif", ".CSV"], ["Csv", "TIF", ".tif"]):
        again = api.post(f"/api/jobs/{LIST}", json={"container_name": name, "extensions": spelling})
        assert again.status_code == 200, again.text
        assert (again.json()["job_id"], again.json()["idempotent"]) == (job["id"], True)


def test_listing_limit_keeps_the_first_files_in_path_order(api, wait_for_job, shared):
    name, folder = shared

    job = run_job(api, wait_for_job, LIST, {"container_name": name, "limit": 2})

    assert [f["path"] for f in job["result"]["files"]] == list(files_on_disk(folder))[:2]
    assert job["result"]["file_count"] == 2
    assert api.get(f"/api/jobs/{job['id']}/tasks").json()["total"] == 1 + 2


def test_listing_with_no_matching_prefix_completes_and_skips_metadata(api, wait_for_job, shared):
    name, _ = shared

    job = run_job(api, wait_for_job, LIST, {"container_name": name, "prefix": "nothing/here/"})

    result = job["result"]
    assert result["message"] == f"no files matched in container '{name}' under 'nothing/here/'"
    assert (result["file_count"], result["total_bytes"], result["files"]) == (0, 0, [])
    assert job["stage_progress"]["list"]["status"] == "completed"
    assert job["stage_progress"]["metadata"]["status"] == "skipped"
    assert job["error"] is None
    tasks = api.get(f"/api/jobs/{job['id']}/tasks").json()
    assert [(t["stage"], t["task_key"]) for t in tasks["items"]] == [("list", "list")]


@pytest.mark.parametrize("job_type", [LIST, SUMMARIZE])
def test_unknown_container_is_404_naming_it_and_creates_no_job(api, unique, job_type):
    before = job_total(api, job_type)
    name = f"missing-{unique}"

    response = api.post(f"/api/jobs/{job_type}", json={"container_name": name})

    assert response.status_code == 404, response.text
    body = response.json()
    assert body["error"] == "NotFound"
    assert f"unknown container '{name}'" in body["message"]
    assert "Known containers:" in body["message"]
    assert job_total(api, job_type) == before


@pytest.mark.parametrize("job_type", [LIST, SUMMARIZE])
@pytest.mark.parametrize("prefix", ["..", "data/../../etc", "/etc"])
def test_prefix_leaving_the_container_is_422_naming_the_field(api, shared, job_type, prefix):
    before = job_total(api, job_type)

    response = api.post(f"/api/jobs/{job_type}", json={"container_name": shared[0], "prefix": prefix})

    assert response.status_code == 422, response.text
    body = response.json()
    assert [f["field"] for f in body["fields"]] == ["prefix"]
    assert f"invalid parameters for {job_type}: prefix: " in body["message"]
    assert repr(prefix) in body["fields"][0]["message"]
    assert "use a path relative to the container" in body["message"]
    assert job_total(api, job_type) == before


def test_invalid_container_name_is_422_with_the_naming_rule(api, unique):
    before = job_total(api, LIST)

    response = api.post(f"/api/jobs/{LIST}", json={"container_name": f"Bad_Name_{unique}"})

    assert response.status_code == 422, response.text
    assert f"invalid container name 'Bad_Name_{unique}'" in response.json()["message"]
    assert "lower-case letters, digits and single hyphens" in response.json()["message"]
    assert job_total(api, LIST) == before


# -- summarize_container ------------------------------------------------------------------------


def expected_groups(on_disk: dict[str, int]) -> dict[str, dict[str, dict[str, int]]]:
    """Files and bytes by extension and by folder, computed directly from the files on disk."""
    groups: dict[str, dict[str, dict[str, int]]] = {"by_extension": {}, "by_folder": {}}
    for path, size in on_disk.items():
        folder, _, file_name = path.rpartition("/")
        ext = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
        for group, key in (("by_extension", ext), ("by_folder", folder)):
            totals = groups[group].setdefault(key, {"files": 0, "bytes": 0})
            totals["files"] += 1
            totals["bytes"] += size
    return groups


def test_summary_counts_by_extension_and_folder_and_lists_the_largest(api, wait_for_job, shared):
    name, folder = shared
    on_disk = files_on_disk(folder)

    result = run_job(api, wait_for_job, SUMMARIZE, {"container_name": name})["result"]

    assert (result["file_count"], result["total_bytes"]) == (len(on_disk), sum(on_disk.values()))
    expected = expected_groups(on_disk)
    assert result["by_extension"] == expected["by_extension"]
    assert {"", "bin", "csv", "dat", "geojson", "tif"} <= set(result["by_extension"])
    assert result["by_extension"]["bin"] == {"files": len(BLOB_SIZES), "bytes": sum(BLOB_SIZES)}
    assert result["by_folder"] == expected["by_folder"]
    assert {"", "blobs", "rasters", "tables", "vectors"} <= set(result["by_folder"])
    # The ten largest files, biggest first (ties by path).
    ten_largest = sorted(on_disk.items(), key=lambda item: (-item[1], item[0]))[:10]
    assert [(e["path"], e["size_bytes"]) for e in result["largest"]] == ten_largest
    assert result["message"] == f"{len(on_disk)} files in container '{name}'"


def test_summary_of_an_empty_container_says_no_files_matched(api, wait_for_job, new_container):
    name, _ = new_container("empty")

    job = run_job(api, wait_for_job, SUMMARIZE, {"container_name": name})

    result = job["result"]
    assert result["message"] == f"no files matched in container '{name}'"
    assert (result["file_count"], result["total_bytes"]) == (0, 0)
    assert (result["by_extension"], result["by_folder"], result["largest"]) == ({}, {}, [])
    assert job["stage_progress"]["summarize"]["status"] == "skipped"


# -- containers configured by URL ---------------------------------------------------------------


def test_job_lists_a_container_configured_by_url(
    api, settings, pool, ray_cluster, wait_for_job, tmp_path, unique
):
    folder = tmp_path / "configured"
    write_bytes(folder / "a/one.csv", POINTS_CSV.encode())
    write_geotiff(folder / "b/two.tif", 8)
    name = f"configured-{unique}"
    # The settings travel with the job to its coordinator and tasks, so this container needs no
    # change to the running API.
    configured = settings.model_copy(update={"containers": {name: folder.as_uri()}})

    done = submission.submit_job(LIST, {"container_name": name}, settings=configured, pool=pool)
    job = completed(api, wait_for_job, done.job.id)

    assert job["result"]["container"] == name
    assert [(f["path"], f["size_bytes"]) for f in job["result"]["files"]] == list(
        files_on_disk(folder).items()
    )
    assert [f["detected_format"] for f in job["result"]["files"]] == ["text", "GeoTIFF/TIFF"]
    # The API's own settings do not know the container.
    unknown = api.post(f"/api/jobs/{LIST}", json={"container_name": name, "prefix": "a/"})
    assert unknown.status_code == 404, unknown.text
    assert f"unknown container '{name}'" in unknown.json()["message"]
