"""The raster jobs on Azure containers (Azurite): read in place through /vsiaz/, outputs written there."""

import uuid

import numpy as np
import pytest
import raster_samples
import rasterio
from rio_cogeo.cogeo import cog_validate

from rayetl.actors import submission
from rayetl.pipelines.raster_io import READ_OPTIONS
from rayetl.store import pgstac
from rayetl.store.objects import Container, open_container


@pytest.fixture
def bronze(azure_settings) -> Container:
    return open_container(azure_settings, "az-bronze")


@pytest.fixture
def silver(azure_settings) -> Container:
    return open_container(azure_settings, "az-silver")


@pytest.fixture
def prefix() -> str:
    """A folder of its own in the shared Azure containers."""
    return f"rasters-{uuid.uuid4().hex[:12]}"


def run(job_type: str, params: dict, *, settings, pool, wait_for_job):
    done = submission.submit_job(job_type, params, settings=settings, pool=pool)
    job = wait_for_job(done.job.id, timeout_s=180)
    assert job.status == "completed", job.error
    return job.result


def read_in_place(container: Container, path: str) -> np.ma.MaskedArray:
    """Pixels of a blob read through GDAL's /vsiaz/, as a user of the output would."""
    with (
        rasterio.Env(**READ_OPTIONS, **container.gdal_env()),
        rasterio.open(container.gdal_path(path)) as src,
    ):
        return src.read(masked=True)


def test_process_raster_tiles_an_azure_blob_into_azure_cogs(
    azure_settings, pool, ray_cluster, wait_for_job, bronze, silver, prefix, tmp_path
):
    dem = raster_samples.dem_float32(tmp_path / "dem.tif", size=700)
    bronze.put_file(dem, f"{prefix}/dem.tif")

    result = run(
        "process_raster",
        {"blob_name": f"{prefix}/dem.tif", "tile_size_px": 512},
        settings=azure_settings,
        pool=pool,
        wait_for_job=wait_for_job,
    )

    assert result["output_container"] == "az-silver" and result["tiles"] == 4
    assert [f.path for f in silver.list(f"{prefix}/")] == sorted(result["files"])
    for tile in result["files"][:-1]:
        silver.get_file(tile, tmp_path / tile)
        assert cog_validate(str(tmp_path / tile), quiet=True)[0]
    with rasterio.open(dem) as src:
        want = src.read(masked=True)
    got = read_in_place(silver, result["files"][-1])  # the VRT, whose tiles sit beside it
    np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
    np.testing.assert_array_equal(got.filled(0), want.filled(0))
    (item,) = pgstac.search_items(azure_settings, "system-rasters", ids=[result["stac_item_id"]])
    assert item["assets"]["mosaic"]["href"] == f"az://az-silver/{prefix}/dem.vrt"


def test_process_raster_writes_one_cog_and_validate_raster_reads_it_back(
    azure_settings, pool, ray_cluster, wait_for_job, bronze, silver, prefix, tmp_path
):
    rgb = raster_samples.rgb_uint8(tmp_path / "rgb.tif", size=300)
    bronze.put_file(rgb, f"{prefix}/rgb.tif")
    settings = dict(settings=azure_settings, pool=pool, wait_for_job=wait_for_job)

    result = run("process_raster", {"blob_name": f"{prefix}/rgb.tif", "cog_profile": "zstd"}, **settings)
    assert result["files"] == [f"{prefix}/rgb.tif"] and silver.exists(f"{prefix}/rgb.tif")
    with rasterio.open(rgb) as src:
        np.testing.assert_array_equal(read_in_place(silver, f"{prefix}/rgb.tif"), src.read(masked=True))

    report = run(
        "validate_raster", {"blob_name": f"{prefix}/rgb.tif", "container_name": "az-silver"}, **settings
    )
    assert report["is_cog"] and report["compression"] == "zstd"


def test_stac_catalog_container_catalogs_azure_rasters(
    azure_settings, pool, ray_cluster, wait_for_job, bronze, prefix, tmp_path
):
    raster_samples.rgb_uint8(tmp_path / "a.tif", size=64)
    raster_samples.dem_float32(tmp_path / "b.tif", size=64)
    for name in ("a.tif", "b.tif"):
        bronze.put_file(tmp_path / name, f"{prefix}/{name}")
    bronze.write_bytes(f"{prefix}/broken.tif", b"not a tiff")
    collection = f"azure-{prefix}"

    result = run(
        "stac_catalog_container",
        {"prefix": f"{prefix}/", "collection_id": collection},
        settings=azure_settings,
        pool=pool,
        wait_for_job=wait_for_job,
    )

    items = pgstac.search_items(azure_settings, collection)
    assert sorted(item["assets"]["data"]["href"] for item in items) == [
        f"az://az-bronze/{prefix}/a.tif",
        f"az://az-bronze/{prefix}/b.tif",
    ]
    assert [failure["path"] for failure in result["failed"]] == [f"{prefix}/broken.tif"]
