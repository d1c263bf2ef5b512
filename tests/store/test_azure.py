"""Containers on Azure Blob Storage (adlfs), against a real Azurite: every method, errors, GDAL reads."""

import uuid
from datetime import datetime

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import raster_samples as samples
import rasterio
import shapely
from azure.storage.blob import BlobServiceClient
from rasterio.windows import Window

from rayetl.errors import InvalidRequest, NotFound
from rayetl.store.objects import Container, open_container


@pytest.fixture
def bronze(azure_settings) -> Container:
    return open_container(azure_settings, "az-bronze")


@pytest.fixture
def prefix() -> str:
    """A folder of its own in the shared Azure containers, so tests never see each other's blobs."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def three_points() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"name": ["a", "b", "c"], "value": [1, 2, 3]},
        geometry=[shapely.Point(0, 0), shapely.Point(1, 1), shapely.Point(2, 2)],
        crs="EPSG:4326",
    )


@pytest.fixture
def gdal_config(bronze):
    """pyogrio's (process-wide) GDAL config holds the container's credentials during the test."""
    env = bronze.gdal_env()
    pyogrio.set_gdal_config_options(env)
    yield env
    pyogrio.set_gdal_config_options(dict.fromkeys(env))


def missing_container(azure_settings, name: str = "az-nowhere") -> Container:
    """A container configured on an Azure container that does not exist on the account."""
    azure_name = f"missing-{uuid.uuid4().hex[:12]}"
    settings = azure_settings.model_copy(
        update={"containers": azure_settings.containers | {name: f"az://{azure_name}"}}
    )
    return open_container(settings, name)


def test_write_bytes_then_read_info_exists_and_delete(bronze, prefix):
    bronze.write_bytes(f"{prefix}/a/b.txt", b"hello azure")
    assert bronze.read_bytes(f"{prefix}/a/b.txt") == b"hello azure"
    info = bronze.info(f"{prefix}/a/b.txt")
    assert (info.path, info.size_bytes) == (f"{prefix}/a/b.txt", 11)
    assert isinstance(info.modified, datetime) and info.modified.tzinfo is not None
    assert bronze.exists(f"{prefix}/a/b.txt") and bronze.exists(f"{prefix}/a")
    bronze.delete(f"{prefix}/a/b.txt")
    assert not bronze.exists(f"{prefix}/a/b.txt")


def test_exists_and_list_see_blobs_other_clients_change(bronze, prefix, azurite):
    bronze.write_bytes(f"{prefix}/shared/one.txt", b"1")
    assert bronze.exists(f"{prefix}/shared/one.txt")
    assert [i.path for i in bronze.list(f"{prefix}/shared/")] == [f"{prefix}/shared/one.txt"]
    with BlobServiceClient.from_connection_string(azurite) as service:
        client = service.get_container_client("az-bronze")
        client.delete_blob(f"{prefix}/shared/one.txt")
        client.upload_blob(f"{prefix}/shared/two.txt", b"2")
    assert not bronze.exists(f"{prefix}/shared/one.txt")
    assert bronze.exists(f"{prefix}/shared/two.txt")
    assert [i.path for i in bronze.list(f"{prefix}/shared/")] == [f"{prefix}/shared/two.txt"]


def test_write_bytes_replaces_a_blob(bronze, prefix):
    bronze.write_bytes(f"{prefix}/x.txt", b"first version")
    bronze.write_bytes(f"{prefix}/x.txt", b"second")
    assert bronze.read_bytes(f"{prefix}/x.txt") == b"second"


def test_list_filters_by_prefix_extension_and_limit(bronze, prefix):
    for name in ("data/roads.csv", "data/rivers.GeoJSON", "data/sub/roads.tif", "other/x.csv"):
        bronze.write_bytes(f"{prefix}/{name}", name.encode())
    listed = bronze.list(f"{prefix}/data/")
    assert [i.path for i in listed] == [
        f"{prefix}/data/rivers.GeoJSON",
        f"{prefix}/data/roads.csv",
        f"{prefix}/data/sub/roads.tif",
    ]
    assert [i.size_bytes for i in listed] == [len("data/rivers.GeoJSON"), len("data/roads.csv"), 18]
    # A prefix is a string prefix, as in blob stores.
    assert [i.path for i in bronze.list(f"{prefix}/data/ro")] == [f"{prefix}/data/roads.csv"]
    assert [i.path for i in bronze.list(prefix, extensions=["geojson", ".TIF"])] == [
        f"{prefix}/data/rivers.GeoJSON",
        f"{prefix}/data/sub/roads.tif",
    ]
    assert len(bronze.list(prefix, limit=2)) == 2
    assert bronze.list(f"{prefix}/nothing-here/") == []


def test_info_of_a_folder_is_refused(bronze, prefix):
    bronze.write_bytes(f"{prefix}/folder/file.txt", b"x")
    with pytest.raises(InvalidRequest, match="is a folder"):
        bronze.info(f"{prefix}/folder")


def test_open_streams_reads_and_writes(bronze, prefix):
    with bronze.open(f"{prefix}/stream.bin", "wb") as f:
        for i in range(4):
            f.write(bytes([i]) * 1000)
    with bronze.open(f"{prefix}/stream.bin", "rb") as f:
        f.seek(2500)
        assert f.read(10) == bytes([2]) * 10
    assert bronze.info(f"{prefix}/stream.bin").size_bytes == 4000


def test_put_file_and_get_file_round_trip(bronze, prefix, tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 40)
    info = bronze.put_file(source, f"{prefix}/up/source.bin")
    assert (info.path, info.size_bytes) == (f"{prefix}/up/source.bin", 10240)
    target = tmp_path / "down" / "deeper" / "copy.bin"
    bronze.get_file(f"{prefix}/up/source.bin", target)
    assert target.read_bytes() == source.read_bytes()


def test_put_file_of_a_missing_local_file_is_not_found(bronze, prefix, tmp_path):
    with pytest.raises(NotFound, match="local file"):
        bronze.put_file(tmp_path / "absent.bin", f"{prefix}/absent.bin")


def test_move_renames_within_the_container(bronze, prefix):
    bronze.write_bytes(f"{prefix}/old.txt", b"moving")
    bronze.write_bytes(f"{prefix}/sub/new.txt", b"to be replaced")
    bronze.move(f"{prefix}/old.txt", f"{prefix}/sub/new.txt")
    assert not bronze.exists(f"{prefix}/old.txt")
    assert bronze.read_bytes(f"{prefix}/sub/new.txt") == b"moving"


@pytest.mark.parametrize(
    "call",
    [
        lambda c, p, tmp: c.info(f"{p}/nope.txt"),
        lambda c, p, tmp: c.read_bytes(f"{p}/nope.txt"),
        lambda c, p, tmp: c.open(f"{p}/nope.txt"),
        lambda c, p, tmp: c.get_file(f"{p}/nope.txt", tmp / "nope.txt"),
        lambda c, p, tmp: c.delete(f"{p}/nope.txt"),
        lambda c, p, tmp: c.move(f"{p}/nope.txt", f"{p}/elsewhere.txt"),
    ],
    ids=["info", "read_bytes", "open", "get_file", "delete", "move"],
)
def test_a_missing_blob_is_not_found(bronze, prefix, tmp_path, call):
    with pytest.raises(NotFound, match=rf"file '{prefix}/nope.txt' not found in container 'az-bronze'"):
        call(bronze, prefix, tmp_path)


@pytest.mark.parametrize(
    "call",
    [
        lambda c, tmp: c.list(),
        lambda c, tmp: c.info("a.txt"),
        lambda c, tmp: c.read_bytes("a.txt"),
        lambda c, tmp: c.write_bytes("a.txt", b"x"),
        lambda c, tmp: c.open("a.txt", "wb"),
        lambda c, tmp: c.put_file(tmp / "local.txt", "a.txt"),
        lambda c, tmp: c.delete("a.txt"),
    ],
    ids=["list", "info", "read_bytes", "write_bytes", "open-write", "put_file", "delete"],
)
def test_a_missing_azure_container_is_named(azure_settings, tmp_path, call):
    container = missing_container(azure_settings)
    (tmp_path / "local.txt").write_bytes(b"x")
    azure_name = container.url.removeprefix("az://")
    with pytest.raises(NotFound) as caught:
        call(container, tmp_path)
    message = str(caught.value)
    assert f"Azure container '{azure_name}' does not exist in storage account 'devstoreaccount1'" in message
    assert "`rayetl storage put` creates it" in message


def test_open_container_with_create_makes_the_azure_container(azure_settings, azurite):
    container = missing_container(azure_settings, "az-created")
    azure_name = container.url.removeprefix("az://")
    settings = azure_settings.model_copy(
        update={"containers": azure_settings.containers | {"az-created": container.url}}
    )
    created = open_container(settings, "az-created", create=True)
    created.write_bytes("first.txt", b"x")
    assert created.list()[0].path == "first.txt"
    with BlobServiceClient.from_connection_string(azurite) as service:
        assert service.get_container_client(azure_name).exists()
    open_container(settings, "az-created", create=True)  # exists already: no-op


def test_a_container_below_a_folder_of_the_azure_container(azure_settings, prefix):
    settings = azure_settings.model_copy(
        update={"containers": azure_settings.containers | {"az-nested": f"az://az-bronze/{prefix}/root"}}
    )
    nested = open_container(settings, "az-nested")
    nested.write_bytes("a.txt", b"nested")
    assert [i.path for i in nested.list()] == ["a.txt"]
    assert open_container(azure_settings, "az-bronze").read_bytes(f"{prefix}/root/a.txt") == b"nested"
    assert nested.gdal_path("a.txt") == f"/vsiaz/az-bronze/{prefix}/root/a.txt"


def test_local_path_downloads_a_blob(bronze, prefix, three_points, tmp_path):
    three_points.to_file(tmp_path / "three.gpkg")
    bronze.put_file(tmp_path / "three.gpkg", f"{prefix}/three.gpkg")
    with bronze.local_path(f"{prefix}/three.gpkg") as path:
        assert pyogrio.read_dataframe(path)["name"].tolist() == ["a", "b", "c"]


def test_local_path_of_a_shapefile_brings_its_siblings(bronze, prefix, three_points, tmp_path):
    three_points.to_file(tmp_path / "roads.shp")
    for part in sorted(tmp_path.glob("roads.*")):
        bronze.put_file(part, f"{prefix}/shp/{part.name}")
    bronze.write_bytes(f"{prefix}/shp/roads_other.dbf", b"not a sibling")
    with bronze.local_path(f"{prefix}/shp/roads.shp", siblings=True) as path:
        downloaded = sorted(p.name for p in type(tmp_path)(path).parent.iterdir())
        frame = pyogrio.read_dataframe(path)
    assert downloaded == sorted(p.name for p in tmp_path.glob("roads.*"))
    assert frame["name"].tolist() == ["a", "b", "c"] and frame.crs.to_epsg() == 4326


def test_local_path_of_a_missing_blob_is_not_found(bronze, prefix):
    with pytest.raises(NotFound, match="not found in container 'az-bronze'"):
        with bronze.local_path(f"{prefix}/absent.gpkg"):
            pass


def test_gdal_path_and_env_name_the_blob_and_the_credentials(bronze, azurite):
    assert bronze.gdal_path("a/b.tif") == "/vsiaz/az-bronze/a/b.tif"
    assert bronze.gdal_env() == {"AZURE_STORAGE_CONNECTION_STRING": azurite}


def test_gdal_env_from_an_account_key_or_sas_token(azure_settings):
    def env_of(options: dict) -> dict:
        settings = azure_settings.model_copy(update={"storage_options": {"az": options}})
        return open_container(settings, "az-bronze").gdal_env()

    assert env_of({"account_name": "acct", "account_key": "a2V5"}) == {
        "AZURE_STORAGE_ACCOUNT": "acct",
        "AZURE_STORAGE_ACCESS_KEY": "a2V5",
    }
    assert env_of({"account_name": "acct2", "sas_token": "?sv=2024&sig=abc"}) == {
        "AZURE_STORAGE_ACCOUNT": "acct2",
        "AZURE_STORAGE_SAS_TOKEN": "sv=2024&sig=abc",
    }
    assert env_of({"account_name": "acct3", "anon": True}) == {
        "AZURE_STORAGE_ACCOUNT": "acct3",
        "AZURE_NO_SIGN_REQUEST": "YES",
    }


def test_rasterio_reads_a_window_through_vsiaz(bronze, prefix, tmp_path):
    local = samples.rgb_uint8(tmp_path / "rgb.tif", size=256, tiled=True, blockxsize=64, blockysize=64)
    bronze.put_file(local, f"{prefix}/rasters/rgb.tif")
    window = Window(64, 128, 32, 16)
    with rasterio.open(local) as src:
        expected, profile = src.read(window=window), src.profile
    with (
        rasterio.Env(**bronze.gdal_env()),
        rasterio.open(bronze.gdal_path(f"{prefix}/rasters/rgb.tif")) as src,
    ):
        assert (src.count, src.width, src.height, src.crs) == (3, 256, 256, profile["crs"])
        assert src.transform == profile["transform"]
        np.testing.assert_array_equal(src.read(window=window), expected)


def test_rasterio_without_the_env_has_no_credentials(bronze, prefix, tmp_path):
    local = samples.rgb_uint8(tmp_path / "rgb.tif", size=16)
    bronze.put_file(local, f"{prefix}/rgb.tif")
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(bronze.gdal_path(f"{prefix}/rgb.tif"))


@pytest.mark.parametrize("driver, ext", [("GeoJSON", "geojson"), ("GPKG", "gpkg")])
def test_pyogrio_reads_through_vsiaz(bronze, prefix, three_points, tmp_path, gdal_config, driver, ext):
    three_points.to_file(tmp_path / f"three.{ext}", driver=driver)
    bronze.put_file(tmp_path / f"three.{ext}", f"{prefix}/three.{ext}")
    path = bronze.gdal_path(f"{prefix}/three.{ext}")
    assert pyogrio.read_info(path)["features"] == 3
    frame = pyogrio.read_dataframe(path)
    assert frame["name"].tolist() == ["a", "b", "c"]
    assert frame.geometry.geom_equals(three_points.geometry).all()


def test_gdal_path_of_a_memory_container_is_refused(azure_settings, tmp_path):
    settings = azure_settings.model_copy(update={"containers": {"mem-lake": f"memory://{uuid.uuid4().hex}"}})
    with pytest.raises(InvalidRequest, match="cannot be read by GDAL directly"):
        open_container(settings, "mem-lake").gdal_path("a.tif")
