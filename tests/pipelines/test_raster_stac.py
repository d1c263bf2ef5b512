"""STAC items of rasters: corpus files checked against their MANIFEST facts, generated edge cases, pgstac."""

import datetime as dt
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely.geometry
from conftest import CORPUS
from raster_samples import (
    categorical_uint8,
    cloud_optimized,
    dem_float32,
    multiband_uint16,
    no_crs,
    rgb_uint8,
    write_raster,
)
from rasterio.transform import from_origin

from rayetl.errors import PermanentError
from rayetl.pipelines.raster_stac import (
    file_sha256,
    raster_item,
    raster_item_id,
    write_items,
)
from rayetl.store import pgstac


def corpus_rasters() -> list[dict]:
    """The MANIFEST entries of the corpus rasters (none when the corpus is absent)."""
    manifest = CORPUS / "MANIFEST.json"
    if not manifest.is_file():
        return []
    return [f for f in json.loads(manifest.read_text())["files"] if f["category"] == "raster"]


RASTERS = corpus_rasters()
GEOREFERENCED = [f for f in RASTERS if f["facts"]["crs"]]


def item_of(path: Path, **kwargs) -> dict:
    """The item of a file as the JSON pgstac receives, with a file:// href."""
    options = {"item_id": path.stem, "collection_id": "test", "href": path.resolve().as_uri()} | kwargs
    return raster_item(str(path), **options).to_dict(include_self_link=False, transform_hrefs=False)


def data_asset(item: dict) -> dict:
    return item["assets"]["data"]


# -- corpus files, against their MANIFEST facts -------------------------------------------------


@pytest.fixture(scope="module")
def corpus_items(corpus) -> dict[str, dict]:
    """The item of every georeferenced corpus raster, with its size and checksum, by corpus file."""
    items = {}
    for entry in GEOREFERENCED:
        path = corpus / entry["file"]
        with path.open("rb") as handle:
            digest = file_sha256(handle)
        items[entry["file"]] = item_of(
            path,
            item_id=raster_item_id("corpus", entry["file"]),
            size_bytes=path.stat().st_size,
            sha256=digest,
        )
    return items


@pytest.mark.parametrize("entry", GEOREFERENCED, ids=lambda e: e["file"])
def test_item_describes_the_grid_crs_and_bands_of_each_corpus_raster(corpus_items, entry):
    facts = entry["facts"]

    item = corpus_items[entry["file"]]

    props, asset = item["properties"], data_asset(item)
    assert props["proj:shape"] == [facts["height"], facts["width"]]
    assert props["proj:transform"][:6] == pytest.approx(facts["transform"])
    assert props["proj:bbox"] == pytest.approx(facts["bounds"], abs=1e-3)
    if facts["crs"].startswith("EPSG:"):
        assert props["proj:epsg"] == int(facts["crs"].removeprefix("EPSG:"))
        assert "proj:wkt2" not in props
    else:  # IGNF, ESRI or custom WKT: no EPSG code, so the CRS travels as WKT2
        assert props["proj:epsg"] is None
        assert props["proj:wkt2"].startswith(("PROJCRS", "PROJCS", "BOUNDCRS"))
    bands = asset["raster:bands"]
    assert [b["data_type"] for b in bands] == [facts["dtype"]] * facts["count"]
    assert {b.get("nodata") for b in bands} == {facts["nodata"]}
    for band in bands:
        assert 0 <= band["statistics"]["valid_percent"] <= 100


@pytest.mark.parametrize("entry", GEOREFERENCED, ids=lambda e: e["file"])
def test_item_geometry_is_valid_4326_matching_the_manifest_bounds(corpus_items, entry):
    item = corpus_items[entry["file"]]

    geometry = shapely.geometry.shape(item["geometry"])
    assert geometry.is_valid and not geometry.is_empty
    assert all(math.isfinite(v) for v in item["bbox"])
    west, south, east, north = item["bbox"]
    assert -180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90
    expected = entry["facts"]["bounds_4326"]
    if expected is not None:
        assert item["bbox"] == pytest.approx(expected, abs=1e-4)
        assert "rayetl:footprint" not in item["properties"]
    else:  # corners off the Earth (geostationary): the hull of the pixels that are on it
        assert "convex hull" in item["properties"]["rayetl:footprint"]
        assert geometry.area > 1000  # a full disk covers a good part of the globe


@pytest.mark.parametrize("entry", GEOREFERENCED, ids=lambda e: e["file"])
def test_item_asset_has_cog_media_type_size_and_multihash_checksum(corpus_items, entry):
    asset = data_asset(corpus_items[entry["file"]])

    expected_type = pystac.MediaType.COG if entry["facts"]["is_valid_cog"] else pystac.MediaType.GEOTIFF
    assert asset["type"] == expected_type
    assert asset["file:size"] == entry["bytes"]
    assert asset["file:checksum"] == "1220" + entry["sha256"]
    assert asset["roles"] == ["data"]
    assert asset["href"].startswith("file://")


@pytest.mark.parametrize("entry", GEOREFERENCED, ids=lambda e: e["file"])
def test_item_has_eo_bands_for_imagery_only(corpus_items, entry):
    facts = entry["facts"]
    asset = data_asset(corpus_items[entry["file"]])

    imagery = facts["count"] >= 3 or {"red", "green", "blue"} & set(facts["color_interpretation"])
    assert ("eo:bands" in asset) == bool(imagery)
    if imagery:
        names = [b.get("common_name") for b in asset["eo:bands"]]
        colours = [c if c in ("red", "green", "blue") else None for c in facts["color_interpretation"]]
        assert names == colours


def test_all_nodata_raster_has_no_statistics_but_valid_percent(corpus):
    (entry,) = [f for f in RASTERS if f["file"] == "raster/all-nodata.tif"]

    bands = data_asset(item_of(corpus / entry["file"]))["raster:bands"]

    assert len(bands) == entry["facts"]["count"]
    assert all(band["statistics"] == {"valid_percent": 0.0} for band in bands)
    assert all("histogram" not in band for band in bands)


@pytest.mark.parametrize("entry", [f for f in RASTERS if not f["facts"]["crs"]], ids=lambda e: e["file"])
def test_raster_without_crs_is_refused_naming_the_file(corpus, entry):
    with pytest.raises(PermanentError, match=r"has no coordinate reference system.*assign one") as info:
        raster_item(
            str(corpus / entry["file"]), item_id="x", collection_id="c", href="h", label=entry["file"]
        )

    assert str(info.value).startswith(entry["file"])


def test_corrupt_raster_is_a_permanent_error_naming_it(corpus):
    with pytest.raises(PermanentError, match=r"^bad/corrupt.tif: cannot read the raster"):
        raster_item(
            str(corpus / "bad/corrupt.tif"), item_id="x", collection_id="c", href="h", label="bad/corrupt.tif"
        )


# -- generated rasters --------------------------------------------------------------------------


def test_datetime_comes_from_tifftag_datetime(tmp_path):
    path = rgb_uint8(tmp_path / "tagged.tif", size=32)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2021:06:15 08:30:00")

    item = item_of(path, modified=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))

    assert item["properties"]["datetime"] == "2021-06-15T08:30:00Z"
    assert item["properties"]["rayetl:datetime_source"] == "TIFFTAG_DATETIME"


def test_datetime_falls_back_to_the_modification_time_and_says_so(tmp_path):
    path = dem_float32(tmp_path / "dem.tif", size=32)
    modified = dt.datetime(2019, 3, 4, 5, 6, 7, tzinfo=dt.UTC)

    given = item_of(path, modified=modified)
    local = item_of(path)

    assert given["properties"]["datetime"] == "2019-03-04T05:06:07Z"
    assert given["properties"]["rayetl:datetime_source"] == "file modification time"
    mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    assert pystac.utils.str_to_datetime(local["properties"]["datetime"]) == mtime


def test_band_statistics_of_generated_rasters(tmp_path):
    dem = data_asset(item_of(dem_float32(tmp_path / "dem.tif", size=64)))["raster:bands"]
    classes = data_asset(item_of(categorical_uint8(tmp_path / "classes.tif", size=64)))["raster:bands"]
    bands = data_asset(item_of(multiband_uint16(tmp_path / "multi.tif", size=32, bands=6)))["raster:bands"]

    # dem_float32 puts nodata in one corner, an eighth of each side.
    assert dem[0]["nodata"] == -9999.0
    assert dem[0]["statistics"]["valid_percent"] == pytest.approx(100 * (1 - 1 / 64))
    assert dem[0]["statistics"]["minimum"] > 100
    # No nodata: every pixel is valid (rio-stac 0.12 alone reports 100 / pixel count).
    assert [b["statistics"]["valid_percent"] for b in bands] == [100.0] * 6
    assert 1 <= classes[0]["statistics"]["minimum"] <= classes[0]["statistics"]["maximum"] <= 6


def test_float_band_without_nodata_counts_nan_as_invalid(tmp_path):
    data = np.ones((1, 10, 10), dtype="float32")
    data[0, :5] = np.nan
    path = write_raster(tmp_path / "half-nan.tif", data)

    (band,) = data_asset(item_of(path))["raster:bands"]

    assert band["statistics"]["valid_percent"] == 50.0
    assert band["statistics"]["minimum"] == band["statistics"]["maximum"] == 1.0


def test_eo_bands_only_for_imagery_and_overridable(tmp_path):
    rgb = rgb_uint8(tmp_path / "rgb.tif", size=32)
    dem = dem_float32(tmp_path / "dem.tif", size=32)

    assert [b["common_name"] for b in data_asset(item_of(rgb))["eo:bands"]] == ["red", "green", "blue"]
    assert "eo:bands" not in data_asset(item_of(dem))
    assert "eo:bands" in data_asset(item_of(dem, with_eo=True))
    assert "eo:bands" not in data_asset(item_of(rgb, with_eo=False))


def test_media_type_is_cog_only_for_a_valid_cog(tmp_path):
    cog = cloud_optimized(tmp_path / "cog.tif", size=1024)
    plain = rgb_uint8(tmp_path / "plain.tif", size=1024)

    assert data_asset(item_of(cog))["type"] == pystac.MediaType.COG
    assert data_asset(item_of(plain))["type"] == pystac.MediaType.GEOTIFF
    assert data_asset(item_of(plain, media_type="image/x-mine"))["type"] == "image/x-mine"


def test_generated_raster_without_crs_is_refused(tmp_path):
    path = no_crs(tmp_path / "nocrs.tif")

    with pytest.raises(PermanentError, match=rf"^{path}: the raster has no coordinate reference system"):
        raster_item(str(path), item_id="x", collection_id="c", href="h")


def test_not_a_raster_is_a_permanent_error(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_bytes(b"this is not a TIFF")

    with pytest.raises(PermanentError, match="fake.tif: cannot read the raster"):
        raster_item(str(path), item_id="x", collection_id="c", href="h")


def antimeridian_raster(path: Path) -> Path:
    """UTM 60N from 550 km to 750 km easting at about 62°N: it spans 180°."""
    data = np.ones((1, 20, 20), dtype="uint8")
    return write_raster(
        path, data, crs="EPSG:32660", transform=from_origin(550_000, 7_000_000, 10_000, 10_000)
    )


def test_footprint_crossing_the_antimeridian_is_split_with_bbox_west_of_east(tmp_path):
    item = item_of(antimeridian_raster(tmp_path / "pacific.tif"))

    geometry = shapely.geometry.shape(item["geometry"])
    assert item["geometry"]["type"] == "MultiPolygon" and geometry.is_valid
    west, south, east, north = item["bbox"]
    assert 170 < west < 180 and -180 < east < -170
    assert 60 < south < north < 66
    assert geometry.bounds[0] == -180 and geometry.bounds[2] == 180


def test_footprint_of_a_raster_holding_the_pole_reaches_it(tmp_path):
    data = np.ones((1, 20, 20), dtype="uint8")
    # NSIDC polar stereographic north, 1000 km either side of the pole.
    path = write_raster(
        tmp_path / "arctic.tif", data, crs="EPSG:3413", transform=from_origin(-1e6, 1e6, 1e5, 1e5)
    )

    item = item_of(path)

    west, south, east, north = item["bbox"]
    assert (west, east, north) == (-180, 180, 90)
    assert 76 < south < 78  # the corners, 1414 km from the pole
    assert shapely.geometry.shape(item["geometry"]).is_valid


def test_extra_assets_with_the_mosaic_as_the_item(tmp_path):
    if shutil.which("gdalbuildvrt") is None:
        pytest.skip("gdalbuildvrt (GDAL's tools) is not installed")
    data = np.arange(2 * 16 * 16, dtype="uint8").reshape(2, 1, 16, 16)
    tiles = [
        write_raster(
            tmp_path / f"tile-{i}.tif", data[i], transform=from_origin(500_000 + 160 * i, 5_900_000, 10, 10)
        )
        for i in range(2)
    ]
    vrt = tmp_path / "mosaic.vrt"
    subprocess.run(["gdalbuildvrt", "-q", str(vrt), *map(str, tiles)], check=True)
    extra = {
        f"tile-{i}": pystac.Asset(tile.as_uri(), media_type=pystac.MediaType.GEOTIFF, roles=["data"])
        for i, tile in enumerate(tiles)
    }

    item = item_of(
        vrt, asset_key="mosaic", media_type="application/xml", asset_roles=["overview"], extra_assets=extra
    )

    assert list(item["assets"]) == ["mosaic", "tile-0", "tile-1"]
    assert item["properties"]["proj:shape"] == [16, 32]  # the whole mosaic, not one tile
    assert item["assets"]["mosaic"]["roles"] == ["overview"]
    assert item["assets"]["tile-1"]["href"] == tiles[1].as_uri()


def test_item_ids_are_deterministic_url_safe_and_distinct():
    ids = {raster_item_id("bronze", p) for p in ("a/b.tif", "a_b.tif", "a b.tif", "A/b.tif")}

    assert len(ids) == 4
    assert raster_item_id("bronze", "a/b.tif") == raster_item_id("bronze", "a/b.tif")
    assert raster_item_id("bronze", "a/b.tif") != raster_item_id("silver", "a/b.tif")
    assert all(
        set(i) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for i in ids
    )
    assert raster_item_id("bronze", "a/b.tif").startswith("bronze.a_b.tif-")


# -- pgstac -------------------------------------------------------------------------------------


def test_corpus_items_are_stored_and_found_in_pgstac(settings, corpus_items, unique):
    collection_id = f"test-rasters-{unique}"
    items = [dict(item, collection=collection_id) for item in corpus_items.values()]

    written = write_items(settings, collection_id, items, batch_size=4)

    assert (written.item_count, written.collection_created) == (len(items), True)
    found = pgstac.search_items(settings, collection_id, limit=100)
    assert sorted(f["id"] for f in found) == sorted(i["id"] for i in items)
    # The geostationary disk is stored too, and found by a search near its sub-satellite point.
    goes = raster_item_id("corpus", "raster/goes.tif")
    near_goes = pgstac.search_items(settings, collection_id, bbox=[-76, -1, -74, 1])
    assert goes in {f["id"] for f in near_goes}
    west, south, east, north = written.extent["spatial"]["bbox"][0]
    for item in items:
        assert west <= item["bbox"][0] and east >= item["bbox"][2]
        assert south <= item["bbox"][1] and north >= item["bbox"][3]


def test_rewriting_items_replaces_them_and_updates_the_extent(settings, tmp_path, unique):
    collection_id = f"test-rewrite-{unique}"
    first = dem_float32(tmp_path / "dem.tif", size=16)
    second = antimeridian_raster(tmp_path / "pacific.tif")
    old = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    new = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)

    def items(modified):
        return [
            raster_item(
                str(p), item_id=p.stem, collection_id=collection_id, href=p.as_uri(), modified=modified
            )
            for p in (first, second)
        ]

    created = write_items(settings, collection_id, items(old))
    again = write_items(settings, collection_id, items(new), batch_size=1)

    assert (created.collection_created, again.collection_created) == (True, False)
    found = pgstac.search_items(settings, collection_id)
    assert sorted(f["id"] for f in found) == ["dem", "pacific"]
    assert {f["properties"]["datetime"] for f in found} == {"2024-05-01T00:00:00Z"}
    assert again.extent["temporal"]["interval"] == [["2024-05-01T00:00:00Z", "2024-05-01T00:00:00Z"]]
    stored = pgstac.get_collection(settings, collection_id)
    assert stored["extent"] == again.extent
    # The antimeridian item is found from either side of 180°.
    assert [f["id"] for f in pgstac.search_items(settings, collection_id, bbox=[179, 60, 180, 66])] == [
        "pacific"
    ]
    assert [f["id"] for f in pgstac.search_items(settings, collection_id, bbox=[-180, 60, -179, 66])] == [
        "pacific"
    ]


def test_write_items_refuses_an_item_of_another_collection(settings, tmp_path, unique):
    path = dem_float32(tmp_path / "dem.tif", size=16)
    item = raster_item(str(path), item_id="dem", collection_id="elsewhere", href=path.as_uri())

    with pytest.raises(PermanentError, match="belongs to collection 'elsewhere'"):
        write_items(settings, f"test-other-{unique}", [item])
