"""process_raster and unpublish_raster end to end over HTTP: rasters into COGs, tiles, STAC, undo."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import raster_samples
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rio_cogeo.cogeo import cog_validate

from rayetl.pipelines.raster_stac import raster_item_id
from rayetl.store import audit, pgstac

JOB = "/api/jobs/process_raster"
UNPUBLISH = "/api/jobs/unpublish_raster"


def put(settings, source: Path, name: str) -> str:
    """Copy a file into the default (bronze) container; returns its blob name."""
    target = settings.local_storage_root / settings.default_container / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)
    return name


def silver(settings) -> Path:
    return settings.local_storage_root / settings.default_output_container


def run(api, wait_for_job, **params):
    response = api.post(JOB, json=params)
    assert response.status_code == 202, response.text
    return wait_for_job(response.json()["job_id"], timeout_s=180)


def completed(api, wait_for_job, **params) -> dict:
    job = run(api, wait_for_job, **params)
    assert job.status == "completed", job.error
    return job.result


def read_masked(path: Path) -> np.ma.MaskedArray:
    with rasterio.open(path) as dataset:
        return dataset.read(masked=True)


def assert_same_pixels(output: Path, source: Path) -> None:
    """Same values everywhere, and the same pixels are nodata."""
    got, want = read_masked(output), read_masked(source)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
    np.testing.assert_array_equal(got.filled(0), want.filled(0))


def hidden_leftovers(folder: Path) -> list[Path]:
    """Staging folders and files a job would leave behind (names with .rayetl-tmp-)."""
    return [p for p in folder.rglob("*") if ".rayetl-tmp-" in p.name] if folder.exists() else []


def item_of(settings, collection: str, item_id: str) -> dict:
    (item,) = pgstac.search_items(settings, collection, ids=[item_id])
    return item


@pytest.fixture
def rgb(tmp_path) -> Path:
    return raster_samples.rgb_uint8(tmp_path / "rgb.tif", size=600)


@pytest.fixture
def dem(tmp_path) -> Path:
    return raster_samples.dem_float32(tmp_path / "dem.tif", size=1100)


def test_a_small_rgb_becomes_one_valid_cog_with_the_same_pixels_and_a_stac_item(
    api, settings, wait_for_job, rgb, unique
):
    blob = put(settings, rgb, f"pr/{unique}/rgb.tif")
    result = completed(api, wait_for_job, blob_name=blob, cog_profile="deflate")

    output = silver(settings) / f"pr/{unique}/rgb.tif"
    assert result["output_path"] == f"pr/{unique}/rgb.tif" and result["files"] == [result["output_path"]]
    assert not result["tiled"] and result["tiles"] == 0
    assert cog_validate(str(output), quiet=True)[0]
    assert_same_pixels(output, rgb)
    assert result["size_bytes"] == output.stat().st_size
    assert result["cog_profile"]["compression"] == "deflate" and result["cog_profile"]["predictor"] == 2
    assert hidden_leftovers(silver(settings)) == []

    item = item_of(settings, "system-rasters", result["stac_item_id"])
    assert item["id"] == raster_item_id(settings.default_output_container, f"pr/{unique}/rgb.tif")
    assert item["properties"]["proj:epsg"] == int(raster_samples.UTM_CRS.split(":")[1])
    asset = item["assets"]["data"]
    assert asset["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert asset["file:size"] == output.stat().st_size
    assert len(asset["raster:bands"]) == 3 and asset["raster:bands"][0]["data_type"] == "uint8"


def test_the_profile_defaults_to_the_one_validation_recommends(api, settings, wait_for_job, rgb, unique):
    blob = put(settings, rgb, f"pr/{unique}/photo.tif")
    result = completed(api, wait_for_job, blob_name=blob, output_path=f"pr/{unique}/out/photo.tif")

    assert result["cog_profile"]["compression"] == "jpeg"  # 8-bit RGB without nodata: imagery
    output = silver(settings) / f"pr/{unique}/out/photo.tif"
    with rasterio.open(output) as cog:
        assert cog.compression.name == "jpeg" and cog.profile["blockxsize"] == 512
    assert cog_validate(str(output), quiet=True)[0]


def test_a_raster_over_the_tile_size_becomes_tiles_whose_mosaic_is_the_source(
    api, settings, wait_for_job, dem, unique
):
    blob = put(settings, dem, f"pr/{unique}/dem.tif")
    result = completed(api, wait_for_job, blob_name=blob, tile_size_px=512, cog_profile="zstd")

    assert result["tiled"] and result["tiles"] == 9  # 1100 px: 512 + 512 + 76, both ways
    tiles = [silver(settings) / f for f in result["files"][:-1]]
    mosaic = silver(settings) / result["files"][-1]
    assert mosaic.name == "dem.vrt" and all(t.parent.name == "dem" for t in tiles)
    assert all(cog_validate(str(tile), quiet=True)[0] for tile in tiles)
    assert sum(rasterio.open(t).width * rasterio.open(t).height for t in tiles) == 1100 * 1100
    assert_same_pixels(mosaic, dem)

    item = item_of(settings, "system-rasters", result["stac_item_id"])
    tile_assets = [key for key, asset in item["assets"].items() if "tile" in asset.get("roles", [])]
    assert len(tile_assets) == 9 and "mosaic" in item["assets"]
    assert item["properties"]["proj:shape"] == [1100, 1100]


def test_reprojection_matches_rasterio_on_the_same_grid(api, settings, wait_for_job, rgb, unique):
    blob = put(settings, rgb, f"pr/{unique}/rgb.tif")
    result = completed(api, wait_for_job, blob_name=blob, target_crs="EPSG:4326", cog_profile="deflate")

    output = silver(settings) / result["output_path"]
    with rasterio.open(output) as cog, rasterio.open(rgb) as src:
        assert cog.crs.to_epsg() == 4326
        # GDAL's exact transformer (rasterio.warp.reproject always approximates to 1/8 pixel); the
        # source has no nodata, so an alpha band marks what lies outside it, as in the COG's mask.
        grid = {"crs": cog.crs, "transform": cog.transform, "width": cog.width, "height": cog.height}
        with WarpedVRT(src, **grid, resampling=Resampling.nearest, tolerance=1e-9, add_alpha=True) as vrt:
            warped = vrt.read()
        got, got_valid = cog.read(), cog.dataset_mask() > 0
    want, want_valid = warped[:3], warped[3] > 0
    np.testing.assert_array_equal(got_valid, want_valid)
    np.testing.assert_array_equal(got[:, got_valid], want[:, want_valid])


def test_replace_removes_the_old_tiles_and_keeps_one_item(api, settings, wait_for_job, dem, unique):
    blob = put(settings, dem, f"pr/{unique}/dem.tif")
    first = completed(api, wait_for_job, blob_name=blob, tile_size_px=512)
    again = api.post(JOB, json={"blob_name": blob})
    assert again.status_code == 409 and "if_exists=replace" in again.json()["message"]

    second = completed(api, wait_for_job, blob_name=blob, tile_size_px=1024, if_exists="replace")
    assert second["tiles"] == 4
    assert sorted(set(first["files"]) - set(second["files"])) == sorted(second["replaced_files"])
    on_disk = sorted(
        str(p.relative_to(silver(settings))) for p in (silver(settings) / f"pr/{unique}").rglob("*.*")
    )
    assert on_disk == sorted(second["files"])
    assert first["stac_item_id"] == second["stac_item_id"]
    item = item_of(settings, "system-rasters", second["stac_item_id"])
    assert len([a for a in item["assets"].values() if "tile" in a.get("roles", [])]) == 4


def test_a_failed_tile_leaves_nothing_under_the_output_path(api, settings, pool, wait_for_job, dem, unique):
    blob = put(settings, dem, f"pr/{unique}/dem.tif")
    job = run(api, wait_for_job, blob_name=blob, tile_size_px=512, inject_faults=["fail_last_tile"])

    assert job.status == "failed" and "injected failure" in job.error
    assert not (silver(settings) / f"pr/{unique}").exists() or not any(
        (silver(settings) / f"pr/{unique}").iterdir()
    )
    assert hidden_leftovers(silver(settings)) == []
    assert (
        pgstac.search_items(
            settings,
            "system-rasters",
            ids=[raster_item_id(settings.default_output_container, f"pr/{unique}/dem.vrt")],
        )
        == []
    )
    with pool.connection() as conn:
        assert [e.event for e in audit.list_events(conn, job.id)].count("cleaned_up") == 1


def test_a_raster_without_crs_fails_with_a_clear_message(api, settings, wait_for_job, tmp_path, unique):
    blob = put(settings, raster_samples.no_crs(tmp_path / "nocrs.tif"), f"pr/{unique}/nocrs.tif")
    job = run(api, wait_for_job, blob_name=blob)
    assert job.status == "failed"
    assert "CRS" in job.error and "nocrs.tif" in job.error


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"blob_name": "missing.tif"}, 404, ["missing.tif", "bronze"]),
        ({"blob_name": "x.tif", "container_name": "nope-container"}, 404, ["nope-container"]),
        ({"blob_name": "notes.txt"}, 422, ["tif", "tiff"]),
        ({"blob_name": "x.tif", "target_crs": "EPSG:999999"}, 422, ["target_crs", "EPSG:999999"]),
        ({"blob_name": "x.tif", "cog_profile": "gzip"}, 422, ["deflate", "zstd", "webp"]),
        ({"blob_name": "x.tif", "tile_size_px": 100}, 422, ["tile_size_px"]),
        ({"blob_name": "x.tif", "output_path": "out.png"}, 422, [".tif"]),
    ],
)
def test_bad_submissions_are_refused_with_what_to_fix(api, settings, rgb, params, status, words):
    put(settings, rgb, "x.tif")
    response = api.post(JOB, json=params)
    assert response.status_code == status, response.text
    detail = str(response.json())
    assert all(word in detail for word in words), detail


def test_unpublish_deletes_the_tiles_the_mosaic_and_the_item(api, settings, wait_for_job, dem, unique):
    blob = put(settings, dem, f"pr/{unique}/dem.tif")
    published = completed(api, wait_for_job, blob_name=blob, tile_size_px=512)

    response = api.post(UNPUBLISH, json={"output_path": f"pr/{unique}/dem.tif"})
    assert response.status_code == 202, response.text
    job = wait_for_job(response.json()["job_id"])
    assert job.status == "completed", job.error
    assert sorted(job.result["files_deleted"]) == sorted(published["files"])
    assert job.result["published_by_link"].endswith(job.result["published_by_job"])
    assert job.result["stac_item_deleted"]
    assert not list((silver(settings) / f"pr/{unique}").rglob("*.*"))
    assert pgstac.search_items(settings, "system-rasters", ids=[published["stac_item_id"]]) == []


def test_unpublish_refuses_files_rayetl_did_not_publish_unless_forced(
    api, settings, wait_for_job, rgb, unique
):
    foreign = silver(settings) / f"pr/{unique}/foreign.tif"
    foreign.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(rgb, foreign)
    response = api.post(UNPUBLISH, json={"output_path": f"pr/{unique}/foreign.tif"})
    assert response.status_code == 409 and "force=true" in response.json()["message"]
    assert api.post(UNPUBLISH, json={"output_path": f"pr/{unique}/none.tif"}).status_code == 404

    response = api.post(UNPUBLISH, json={"output_path": f"pr/{unique}/foreign.tif", "force": True})
    job = wait_for_job(response.json()["job_id"])
    assert job.status == "completed" and job.result["published_by_job"] is None
    assert not foreign.exists()


def test_corpus_rasters_become_cogs_with_their_pixels(api, settings, wait_for_job, corpus, unique):
    for name in ("RGB.byte.tif", "float_raster_with_nodata.tif", "RGBA.uint16.tif"):
        source = corpus / "raster" / name
        blob = put(settings, source, f"pr/{unique}/{name}")
        result = completed(api, wait_for_job, blob_name=blob)
        output = silver(settings) / result["output_path"]
        assert cog_validate(str(output), quiet=True)[0], name
        assert_same_pixels(output, source)


def test_the_cli_validates_processes_and_unpublishes_a_raster(api, settings, rgb, unique):
    from test_cli import rayetl, session_env

    env = session_env(settings)
    blob = put(settings, rgb, f"pr/{unique}/cli.tif")

    checked = rayetl("submit", "validate_raster", "-p", f"blob_name={blob}", "--wait", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout[checked.stdout.index("{") :])["result"]
    assert report["kind"] == "rgb" and report["epsg"] == 32632

    done = rayetl(
        "submit", "process_raster", "-p", f"blob_name={blob}", "-p", "cog_profile=lzw", "--wait", env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert cog_validate(str(silver(settings) / blob), quiet=True)[0]

    undone = rayetl("submit", "unpublish_raster", "-p", f"output_path={blob}", "--wait", env=env)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert not (silver(settings) / blob).exists()
