"""list_container_contents and summarize_container end to end: HTTP API → Ray cluster → files on disk."""

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
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

# The generated files, and the format detect_format names from their first bytes.
GENERATED_FORMATS = {
    "empty.dat": "empty",
    "rasters/SCAN.TIF": "GeoTIFF/TIFF",
    "rasters/small.tif": "GeoTIFF/TIFF",
    "tables/README": "text",
    "tables/points.csv": "text",
    "vectors/three.geojson": "JSON",
}
# Corpus file → (path in the container, detected format).
CORPUS_FILES = {
    "vector/rmnp.geojson": ("corpus/rmnp.geojson", "JSON"),
    "raster/byte.tif": ("corpus/byte.tif", "GeoTIFF/TIFF"),
    "vector/test_gpkg_nulls.gpkg": ("corpus/test_gpkg_nulls.gpkg", "SQLite/GeoPackage"),
}
# The listings of the shared container, submitted together so that they run side by side.
SHARED_LISTINGS = {
    "everything": {},
    "prefix rasters/": {"prefix": "rasters/"},
    "prefix rasters/sm": {"prefix": "rasters/sm"},
    "extensions": {"extensions": [".TIF", "csv"]},
    "limit": {"limit": 2},
    "no match": {"prefix": "nothing/here/"},
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


def fill_generated(folder: Path) -> None:
    """The files of GENERATED_FORMATS: small, in sub-folders, and one empty file at the root."""
    write_text(folder / "vectors/three.geojson", THREE_POINTS)
    write_text(folder / "tables/points.csv", POINTS_CSV)
    write_text(folder / "tables/README", "a file without an extension\n")
    write_geotiff(folder / "rasters/small.tif", 64)
    write_geotiff(folder / "rasters/SCAN.TIF", 16)
    (folder / "empty.dat").touch()


def files_on_disk(root: Path) -> dict[str, int]:
    """Relative path → size of every file under root, sorted: what the jobs must report."""
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


@dataclass(frozen=True)
class SharedContainer:
    """A container of generated files that no test changes, and the jobs submitted on it."""

    name: str
    folder: Path
    job_ids: dict[str, str]


@pytest.fixture(scope="module")
def shared(api, settings) -> SharedContainer:
    # One container read by many jobs: submitting them together keeps the file well under a minute.
    name = f"shared-{time.time_ns()}"
    folder = settings.local_storage_root / name
    fill_generated(folder)
    job_ids = {
        label: submit(api, LIST, {"container_name": name, **params})
        for label, params in SHARED_LISTINGS.items()
    }
    job_ids["summary"] = submit(api, SUMMARIZE, {"container_name": name})
    yield SharedContainer(name, folder, job_ids)
    shutil.rmtree(folder, ignore_errors=True)


# -- list_container_contents --------------------------------------------------------------------


def test_listing_reports_every_file_with_its_size(api, wait_for_job, shared):
    on_disk = files_on_disk(shared.folder)

    result = completed(api, wait_for_job, shared.job_ids["everything"])["result"]

    assert result["container"] == shared.name
    assert result["file_count"] == len(on_disk) == 6
    assert result["total_bytes"] == sum(on_disk.values())
    assert [(f["path"], f["size_bytes"]) for f in result["files"]] == list(on_disk.items())
    assert result["message"] == f"6 files in container '{shared.name}'"


def test_listing_detects_format_from_leading_bytes(api, wait_for_job, shared):
    result = completed(api, wait_for_job, shared.job_ids["everything"])["result"]

    by_path = {f["path"]: f for f in result["files"]}
    assert {path: f["detected_format"] for path, f in by_path.items()} == GENERATED_FORMATS
    assert (by_path["rasters/SCAN.TIF"]["extension"], by_path["tables/README"]["extension"]) == ("tif", "")
    assert by_path["rasters/small.tif"]["media_type"] == "image/tiff"


def test_listing_runs_one_list_task_and_one_metadata_task_per_file(api, wait_for_job, shared):
    job = completed(api, wait_for_job, shared.job_ids["everything"])

    tasks = api.get(f"/api/jobs/{job['id']}/tasks").json()

    assert tasks["total"] == 1 + len(files_on_disk(shared.folder)) == 7
    assert Counter(t["stage"] for t in tasks["items"]) == {"list": 1, "metadata": 6}
    assert [t["task_key"] for t in tasks["items"]] == ["list"] + [f"file-{i}" for i in range(6)]
    assert {t["status"] for t in tasks["items"]} == {"completed"}
    assert job["stage_progress"]["metadata"] == {
        "status": "completed", "total": 6, "completed": 6, "failed": 0, "retried": 0
    }  # fmt: skip


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("rasters/", ["rasters/SCAN.TIF", "rasters/small.tif"]),
        ("rasters/sm", ["rasters/small.tif"]),  # a string prefix, as in blob stores
    ],
)
def test_listing_keeps_only_paths_under_the_prefix(api, wait_for_job, shared, prefix, expected):
    result = completed(api, wait_for_job, shared.job_ids[f"prefix {prefix}"])["result"]

    assert [f["path"] for f in result["files"]] == expected
    assert result["prefix"] == prefix
    assert result["total_bytes"] == sum((shared.folder / path).stat().st_size for path in expected)
    assert result["message"] == f"{len(expected)} files in container '{shared.name}' under '{prefix}'"


def test_listing_matches_extensions_case_insensitively_with_or_without_dot(api, wait_for_job, shared):
    job = completed(api, wait_for_job, shared.job_ids["extensions"])  # submitted as [".TIF", "csv"]

    assert job["params"]["extensions"] == ["csv", "tif"]
    assert [f["path"] for f in job["result"]["files"]] == [
        "rasters/SCAN.TIF", "rasters/small.tif", "tables/points.csv"
    ]  # fmt: skip
    # Other spellings of the same extensions are the same job.
    for spelling in (["tif", ".CSV"], ["Csv", "TIF", ".tif"]):
        again = api.post(f"/api/jobs/{LIST}", json={"container_name": shared.name, "extensions": spelling})
        assert again.status_code == 200, again.text
        assert (again.json()["job_id"], again.json()["idempotent"]) == (job["id"], True)


def test_listing_limit_keeps_the_first_files_in_path_order(api, wait_for_job, shared):
    job = completed(api, wait_for_job, shared.job_ids["limit"])  # limit=2

    assert [f["path"] for f in job["result"]["files"]] == list(files_on_disk(shared.folder))[:2]
    assert job["result"]["file_count"] == 2
    assert api.get(f"/api/jobs/{job['id']}/tasks").json()["total"] == 1 + 2


def test_listing_with_no_matching_prefix_completes_and_skips_metadata(api, wait_for_job, shared):
    job = completed(api, wait_for_job, shared.job_ids["no match"])

    result = job["result"]
    assert result["message"] == f"no files matched in container '{shared.name}' under 'nothing/here/'"
    assert (result["file_count"], result["total_bytes"], result["files"]) == (0, 0, [])
    assert job["stage_progress"]["list"]["status"] == "completed"
    assert job["stage_progress"]["metadata"]["status"] == "skipped"
    assert job["error"] is None
    tasks = api.get(f"/api/jobs/{job['id']}/tasks").json()
    assert [(t["stage"], t["task_key"]) for t in tasks["items"]] == [("list", "list")]


def test_listing_detects_formats_of_corpus_files(api, wait_for_job, new_container, corpus):
    name, folder = new_container("corpus")
    manifest = {entry["file"]: entry for entry in json.loads((corpus / "MANIFEST.json").read_text())["files"]}
    for source, (target, _) in CORPUS_FILES.items():
        assert source in manifest, f"{source} is not in the corpus MANIFEST"
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / source, folder / target)
    fill_generated(folder)

    result = run_job(api, wait_for_job, LIST, {"container_name": name, "prefix": "corpus/"})["result"]

    assert {f["path"]: f["detected_format"] for f in result["files"]} == dict(CORPUS_FILES.values())
    assert {f["path"]: f["size_bytes"] for f in result["files"]} == {
        target: manifest[source]["bytes"] for source, (target, _) in CORPUS_FILES.items()
    }


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

    response = api.post(f"/api/jobs/{job_type}", json={"container_name": shared.name, "prefix": prefix})

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


def test_summary_counts_files_and_bytes_by_extension_and_folder(api, wait_for_job, shared):
    on_disk = files_on_disk(shared.folder)

    result = completed(api, wait_for_job, shared.job_ids["summary"])["result"]

    expected = expected_groups(on_disk)
    assert (result["file_count"], result["total_bytes"]) == (len(on_disk), sum(on_disk.values()))
    assert result["by_extension"] == expected["by_extension"]
    assert set(result["by_extension"]) == {"", "csv", "dat", "geojson", "tif"}
    assert result["by_extension"]["tif"]["files"] == 2  # .tif and .TIF together
    assert result["by_folder"] == expected["by_folder"]
    assert set(result["by_folder"]) == {"", "rasters", "tables", "vectors"}
    assert result["message"] == f"6 files in container '{shared.name}'"


def test_summary_lists_the_ten_largest_files_biggest_first(api, wait_for_job, new_container):
    name, folder = new_container("big")
    for i in range(12):
        write_text(folder / f"part-{i % 3}/file-{i:02d}.bin", "x" * (100 + 37 * ((i * 5) % 12)))
    on_disk = files_on_disk(folder)

    result = run_job(api, wait_for_job, SUMMARIZE, {"container_name": name})["result"]

    ten_largest = sorted(on_disk.items(), key=lambda item: (-item[1], item[0]))[:10]
    assert [(e["path"], e["size_bytes"]) for e in result["largest"]] == ten_largest
    sizes = [e["size_bytes"] for e in result["largest"]]
    assert sizes == sorted(sizes, reverse=True)
    assert result["by_folder"] == expected_groups(on_disk)["by_folder"]


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
    api, wait_for_job, settings, pool, ray_cluster, tmp_path, unique
):
    folder = tmp_path / "configured"
    write_text(folder / "a/one.csv", POINTS_CSV)
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
