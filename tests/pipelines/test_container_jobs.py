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
from conftest import wait_until
from rasterio.transform import from_origin

from rayetl.actors import submission

LIST = "list_container_contents"
SUMMARIZE = "summarize_container"

THREE_POINTS = """{"type": "FeatureCollection", "features": [
  {"type": "Feature", "properties": {"name": "a"}, "geometry": {"type": "Point", "coordinates": [0, 0]}},
  {"type": "Feature", "properties": {"name": "b"}, "geometry": {"type": "Point", "coordinates": [1, 1]}},
  {"type": "Feature", "properties": {"name": "c"}, "geometry": {"type": "Point", "coordinates": [2, 2]}}
]}
"""
POINTS_CSV = "id,name,latitude,longitude\n1,a,0.0,0.0\n2,b,1.0,1.0\n3,c,2.0,2.0\n"

# What detect_format names each generated file from its first bytes.
GENERATED_FORMATS = {
    "vectors/three.geojson": "JSON",
    "tables/points.csv": "text",
    "rasters/small.tif": "GeoTIFF/TIFF",
    "rasters/SCAN.TIF": "GeoTIFF/TIFF",
    "empty.dat": "empty",
}
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


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def files_on_disk(root: Path) -> dict[str, int]:
    """Relative path → size of every file under root, the ground truth the jobs must report."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = Path(folder) / name
            found[full.relative_to(root).as_posix()] = full.stat().st_size
    return dict(sorted(found.items()))


@pytest.fixture
def new_container(settings, unique):
    """Makes empty local containers with unique names; removes them afterwards."""
    made = []

    def make(label: str = "c") -> tuple[str, Path]:
        name = f"{label}-{unique}-{len(made)}"
        folder = settings.local_storage_root / name
        folder.mkdir(parents=True)
        made.append(folder)
        return name, folder

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


def fill_generated(folder: Path) -> None:
    """Small generated files in sub-folders, and one empty file at the root."""
    write_text(folder / "vectors/three.geojson", THREE_POINTS)
    write_text(folder / "tables/points.csv", POINTS_CSV)
    write_geotiff(folder / "rasters/small.tif", 64)
    write_geotiff(folder / "rasters/SCAN.TIF", 16)
    (folder / "empty.dat").touch()


@pytest.fixture
def container(new_container) -> tuple[str, Path]:
    """A fresh container of generated files (see GENERATED_FORMATS)."""
    name, folder = new_container("gen")
    fill_generated(folder)
    return name, folder


@pytest.fixture
def corpus_container(container, corpus) -> tuple[str, Path]:
    """The generated container plus three real-world files from the shared corpus."""
    name, folder = container
    manifest = {entry["file"]: entry for entry in json.loads((corpus / "MANIFEST.json").read_text())["files"]}
    for source, (target, _) in CORPUS_FILES.items():
        assert source in manifest, f"{source} is not in the corpus MANIFEST"
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / source, folder / target)
        assert (folder / target).stat().st_size == manifest[source]["bytes"]
    return name, folder


def submit(api, job_type: str, params: dict) -> str:
    response = api.post(f"/api/jobs/{job_type}", json=params)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def wait_for_end(api, job_id: str) -> dict:
    """Poll GET /api/jobs/{id} until the job ends; return it as the API shows it."""

    def ended():
        job = api.get(f"/api/jobs/{job_id}").json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    return wait_until(ended, timeout_s=60, what=f"job {job_id[:12]} to end")


def run_jobs(api, job_type: str, many_params: list[dict]) -> list[dict]:
    """Submit all jobs at once (they run side by side), then wait for each to complete."""
    jobs = [wait_for_end(api, job_id) for job_id in [submit(api, job_type, p) for p in many_params]]
    for job in jobs:
        assert job["status"] == "completed", job["error"]
    return jobs


def run_job(api, job_type: str, params: dict) -> dict:
    (job,) = run_jobs(api, job_type, [params])
    return job


def job_total(api, job_type: str) -> int:
    response = api.get("/api/jobs", params={"job_type": job_type})
    assert response.status_code == 200, response.text
    return response.json()["total"]


# -- list_container_contents --------------------------------------------------------------------


@pytest.fixture(scope="module")
def listed(api, settings) -> tuple[str, Path, dict]:
    """One listing of a generated container, shared by the tests that only read its result."""
    name = f"listed-{time.time_ns()}"
    folder = settings.local_storage_root / name
    fill_generated(folder)
    yield name, folder, run_job(api, LIST, {"container_name": name})
    shutil.rmtree(folder, ignore_errors=True)


def test_listing_reports_every_file_with_its_size(listed):
    name, folder, job = listed
    on_disk = files_on_disk(folder)

    result = job["result"]
    assert result["container"] == name
    assert result["file_count"] == len(on_disk) == 5
    assert result["total_bytes"] == sum(on_disk.values())
    assert {f["path"]: f["size_bytes"] for f in result["files"]} == on_disk
    assert [f["path"] for f in result["files"]] == sorted(on_disk)
    assert result["message"] == f"5 files in container '{name}'"


def test_listing_detects_format_from_leading_bytes(listed):
    by_path = {f["path"]: f for f in listed[2]["result"]["files"]}

    assert {path: f["detected_format"] for path, f in by_path.items()} == GENERATED_FORMATS
    assert by_path["rasters/SCAN.TIF"]["extension"] == "tif"
    assert by_path["rasters/small.tif"]["media_type"] == "image/tiff"
    assert by_path["empty.dat"]["size_bytes"] == 0


def test_listing_runs_one_list_task_and_one_metadata_task_per_file(api, listed):
    _, folder, job = listed

    tasks = api.get(f"/api/jobs/{job['id']}/tasks").json()

    assert tasks["total"] == 1 + len(files_on_disk(folder))
    assert Counter(t["stage"] for t in tasks["items"]) == {"list": 1, "metadata": 5}
    assert [t["task_key"] for t in tasks["items"] if t["stage"] == "metadata"] == [
        f"file-{i}" for i in range(5)
    ]
    assert {t["status"] for t in tasks["items"]} == {"completed"}
    assert job["stage_progress"]["metadata"] == {
        "status": "completed", "total": 5, "completed": 5, "failed": 0, "retried": 0
    }  # fmt: skip


def test_listing_detects_formats_of_corpus_files(api, corpus_container):
    name, folder = corpus_container

    result = run_job(api, LIST, {"container_name": name, "prefix": "corpus/"})["result"]

    expected = {target: fmt for target, fmt in CORPUS_FILES.values()}
    assert {f["path"]: f["detected_format"] for f in result["files"]} == expected
    assert {f["path"]: f["size_bytes"] for f in result["files"]} == {
        path: size for path, size in files_on_disk(folder).items() if path.startswith("corpus/")
    }


def test_listing_keeps_only_paths_under_the_prefix(api, container):
    name, folder = container
    expected = {
        "rasters/": ["rasters/SCAN.TIF", "rasters/small.tif"],
        "rasters": ["rasters/SCAN.TIF", "rasters/small.tif"],
        "rasters/sm": ["rasters/small.tif"],  # a string prefix, as in blob stores
    }

    jobs = run_jobs(api, LIST, [{"container_name": name, "prefix": prefix} for prefix in expected])

    results = {job["result"]["prefix"]: job["result"] for job in jobs}
    assert {prefix: [f["path"] for f in r["files"]] for prefix, r in results.items()} == expected
    for prefix, paths in expected.items():
        assert results[prefix]["total_bytes"] == sum((folder / path).stat().st_size for path in paths)
        assert results[prefix]["message"] == f"{len(paths)} files in container '{name}' under '{prefix}'"


def test_listing_matches_extensions_case_insensitively_with_or_without_dot(api, container):
    name, _ = container

    job = run_job(api, LIST, {"container_name": name, "extensions": [".TIF", "csv"]})

    assert job["params"]["extensions"] == ["csv", "tif"]
    assert [f["path"] for f in job["result"]["files"]] == [
        "rasters/SCAN.TIF", "rasters/small.tif", "tables/points.csv"
    ]  # fmt: skip
    # Other spellings of the same extensions are the same job.
    for spelling in (["tif", ".CSV"], ["Csv", "TIF", ".tif"]):
        again = api.post(f"/api/jobs/{LIST}", json={"container_name": name, "extensions": spelling})
        assert again.status_code == 200, again.text
        assert (again.json()["job_id"], again.json()["idempotent"]) == (job["id"], True)


def test_listing_limit_keeps_the_first_files_in_path_order(api, container):
    name, folder = container

    job = run_job(api, LIST, {"container_name": name, "limit": 2})

    assert [f["path"] for f in job["result"]["files"]] == list(files_on_disk(folder))[:2]
    assert job["result"]["file_count"] == 2
    assert api.get(f"/api/jobs/{job['id']}/tasks").json()["total"] == 1 + 2


def test_listing_with_no_matching_prefix_completes_and_skips_metadata(api, container):
    name, _ = container

    job = run_job(api, LIST, {"container_name": name, "prefix": "nothing/here/"})

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
def test_prefix_leaving_the_container_is_422_naming_the_field(api, listed, job_type, prefix):
    name = listed[0]
    before = job_total(api, job_type)

    response = api.post(f"/api/jobs/{job_type}", json={"container_name": name, "prefix": prefix})

    assert response.status_code == 422, response.text
    body = response.json()
    assert [f["field"] for f in body["fields"]] == ["prefix"]
    assert f"prefix: Value error, prefix {prefix!r} leaves the container" in body["message"]
    assert "without '..'" in body["message"]
    assert job_total(api, job_type) == before


def test_invalid_container_name_is_422_with_the_naming_rule(api, unique):
    before = job_total(api, LIST)

    response = api.post(f"/api/jobs/{LIST}", json={"container_name": f"Bad_Name_{unique}"})

    assert response.status_code == 422, response.text
    assert f"invalid container name 'Bad_Name_{unique}'" in response.json()["message"]
    assert "lower-case letters, digits and single hyphens" in response.json()["message"]
    assert job_total(api, LIST) == before


# -- summarize_container ------------------------------------------------------------------------


def expected_summary(on_disk: dict[str, int]) -> dict:
    """The summary computed directly from the files on disk."""
    by_extension: dict[str, dict[str, int]] = {}
    by_folder: dict[str, dict[str, int]] = {}
    for path, size in on_disk.items():
        folder, _, file_name = path.rpartition("/")
        ext = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
        for groups, key in ((by_extension, ext), (by_folder, folder)):
            totals = groups.setdefault(key, {"files": 0, "bytes": 0})
            totals["files"] += 1
            totals["bytes"] += size
    return {"by_extension": by_extension, "by_folder": by_folder}


def test_summary_counts_files_and_bytes_by_extension_and_folder(api, container):
    name, folder = container
    (folder / "tables/README").write_text("no extension\n")
    on_disk = files_on_disk(folder)

    result = run_job(api, SUMMARIZE, {"container_name": name})["result"]

    expected = expected_summary(on_disk)
    assert result["file_count"] == len(on_disk) == 6
    assert result["total_bytes"] == sum(on_disk.values())
    assert result["by_extension"] == expected["by_extension"]
    assert set(result["by_extension"]) == {"geojson", "csv", "tif", "dat", ""}
    assert result["by_extension"]["tif"]["files"] == 2
    assert result["by_folder"] == expected["by_folder"]
    assert set(result["by_folder"]) == {"", "vectors", "tables", "rasters"}
    assert result["message"] == f"6 files in container '{name}'"


def test_summary_lists_the_ten_largest_files_biggest_first(api, new_container):
    name, folder = new_container("big")
    for i in range(12):
        write_text(folder / f"part-{i % 3}/file-{i:02d}.bin", "x" * (100 + 37 * ((i * 5) % 12)))
    on_disk = files_on_disk(folder)

    result = run_job(api, SUMMARIZE, {"container_name": name})["result"]

    sizes = [entry["size_bytes"] for entry in result["largest"]]
    assert sizes == sorted(sizes, reverse=True)
    assert len(result["largest"]) == 10
    ten_largest = sorted(on_disk.items(), key=lambda item: (-item[1], item[0]))[:10]
    assert [(e["path"], e["size_bytes"]) for e in result["largest"]] == ten_largest
    assert result["by_folder"] == expected_summary(on_disk)["by_folder"]


def test_summary_of_an_empty_container_says_no_files_matched(api, new_container):
    name, _ = new_container("empty")

    job = run_job(api, SUMMARIZE, {"container_name": name})

    result = job["result"]
    assert result["message"] == f"no files matched in container '{name}'"
    assert (result["file_count"], result["total_bytes"]) == (0, 0)
    assert (result["by_extension"], result["by_folder"], result["largest"]) == ({}, {}, [])
    assert job["stage_progress"]["summarize"]["status"] == "skipped"


# -- containers configured by URL ---------------------------------------------------------------


def test_job_lists_a_container_configured_by_url(api, settings, pool, ray_cluster, tmp_path, unique):
    folder = tmp_path / "configured"
    write_text(folder / "a/one.csv", POINTS_CSV)
    write_geotiff(folder / "b/two.tif", 8)
    name = f"configured-{unique}"
    # The settings travel with the job to its coordinator and tasks, so this container needs no
    # change to the running API.
    configured = settings.model_copy(update={"containers": {name: folder.as_uri()}})

    done = submission.submit_job(LIST, {"container_name": name}, settings=configured, pool=pool)
    job = wait_for_end(api, done.job.id)

    assert job["status"] == "completed", job["error"]
    assert job["result"]["container"] == name
    assert {f["path"]: f["size_bytes"] for f in job["result"]["files"]} == files_on_disk(folder)
    assert [f["detected_format"] for f in job["result"]["files"]] == ["text", "GeoTIFF/TIFF"]
    # The API's own settings do not know the container.
    unknown = api.post(f"/api/jobs/{LIST}", json={"container_name": name, "prefix": "a/"})
    assert unknown.status_code == 404, unknown.text
    assert f"unknown container '{name}'" in unknown.json()["message"]
