"""inspect_raster, open_raster and the raster params on real files: the corpus and generated rasters."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import raster_samples as samples
import rasterio
from pydantic import ValidationError
from rasterio.transform import from_origin

from rayetl.errors import NotFound
from rayetl.pipelines.raster_inspect import FINDINGS, RasterReport, inspect_raster
from rayetl.pipelines.raster_io import UnreadableRasterError, open_raster
from rayetl.pipelines.raster_params import (
    COG_COMPRESSIONS,
    RASTER_EXTENSIONS,
    RasterSource,
    check_raster_source,
)
from rayetl.pipelines.raster_profile import recommend_profile
from rayetl.settings import Settings
from rayetl.store.objects import open_container

# What the corpus files are, in this project's terms (the manifest states the file facts):
# kind and the codes of the findings.
CORPUS_VERDICTS = {
    "raster/RGB.byte.tif": ("rgb", set()),
    "raster/RGBA.uint16.tif": ("rgba", set()),
    "raster/all-nodata.tif": ("multispectral", {"all_nodata"}),
    "raster/byte.tif": ("continuous", set()),  # 400 pixels: too few to call its 18 values classes
    "raster/cogeo.tif": ("rgb", set()),
    "raster/float_nan.tif": ("continuous", {"no_crs", "south_up"}),
    "raster/float_raster_with_nodata.tif": ("continuous", set()),
    "raster/goes.tif": ("rgb", {"bounds_4326_approximate"}),
    "raster/rotated.tif": ("continuous", {"no_crs", "rotated"}),
    "raster/s2a_l2a_fishbourne.tif": ("multispectral", set()),
    "raster/shade.tif": ("categorical", {"constant"}),  # its valid pixels are all 0
    "raster/test_esri_wkt.tif": ("continuous", set()),
    "raster/world.byte.tif": ("categorical", set()),  # a 0/1 land mask
}


def manifest_entries(corpus: Path, category: str) -> dict[str, dict]:
    files = json.loads((corpus / "MANIFEST.json").read_text())["files"]
    return {entry["file"]: entry for entry in files if entry["category"] == category}


def inspect_file(path: Path, **kwargs) -> RasterReport:
    with rasterio.open(path) as dataset:
        return inspect_raster(dataset, **kwargs)


def min_max(bounds: list[float]) -> list[float]:
    left, bottom, right, top = bounds
    return [min(left, right), min(bottom, top), max(left, right), max(bottom, top)]


def codes(report: RasterReport) -> set[str]:
    return {finding.code for finding in report.findings}


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings whose storage is a folder of tmp_path, with an empty 'bronze' container."""
    settings = Settings(home=tmp_path / "home", storage_root=tmp_path / "storage")
    (settings.local_storage_root / "bronze").mkdir(parents=True)
    return settings


@pytest.fixture
def bronze(settings, tmp_path):
    return open_container(settings, "bronze")


# -- the corpus ---------------------------------------------------------------------------------


def test_every_corpus_raster_has_a_verdict(corpus):
    assert set(manifest_entries(corpus, "raster")) == set(CORPUS_VERDICTS)


@pytest.mark.parametrize("name", sorted(CORPUS_VERDICTS))
def test_corpus_raster_report_matches_the_manifest(corpus, name):
    facts = manifest_entries(corpus, "raster")[name]["facts"]

    report = inspect_file(corpus / name)

    assert (report.driver, report.width, report.height, report.count) == (
        facts["driver"], facts["width"], facts["height"], facts["count"]
    )  # fmt: skip
    assert report.dtypes == [facts["dtype"]] * facts["count"]
    if facts["nodata"] == "NaN":
        assert math.isnan(report.nodata)
    else:
        assert report.nodata == facts["nodata"]
    if facts["crs"] is None:
        assert (report.crs, report.epsg) == (None, None)
    elif facts["crs"].startswith("WKT:"):  # no authority code: the report gives the WKT
        assert report.crs.startswith(("PROJCS[", "PROJCRS[")) and report.epsg is None
    else:
        assert report.crs == facts["crs"]
        expected_epsg = int(facts["crs"].split(":")[1]) if facts["crs"].startswith("EPSG:") else None
        assert report.epsg == expected_epsg
    assert report.transform == pytest.approx(facts["transform"], rel=1e-9)
    assert report.bounds == pytest.approx(min_max(facts["bounds"]), abs=1e-5)
    if facts["bounds_4326"] is not None:
        assert report.bounds_4326 == pytest.approx(facts["bounds_4326"], abs=2e-6)
    assert report.compression == facts["compression"]
    assert report.block_shape == facts["block_shape"]
    assert report.overviews == facts["overviews_band1"]
    assert report.color_interpretation == facts["color_interpretation"]
    assert (report.is_cog, report.cog_errors, report.cog_warnings) == (
        facts["is_valid_cog"], facts["cog_validate_errors"], facts["cog_validate_warnings"]
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(CORPUS_VERDICTS))
def test_corpus_raster_kind_findings_and_profile(corpus, name):
    kind, expected_codes = CORPUS_VERDICTS[name]

    report = inspect_file(corpus / name)

    assert report.kind == kind
    assert codes(report) == expected_codes
    assert report.recommended.compression in COG_COMPRESSIONS
    for finding in report.findings:
        assert finding.severity == FINDINGS[finding.code][0]
    # The report goes to Postgres as JSON, which has no NaN: it must survive a strict round trip.
    as_json = json.dumps(report.model_dump(mode="json"), allow_nan=False)
    assert RasterReport.model_validate_json(as_json).model_dump(mode="json") == report.model_dump(mode="json")


def test_corpus_rasters_without_a_crs_have_no_bounds_4326(corpus):
    for name, entry in manifest_entries(corpus, "raster").items():
        if entry["facts"]["crs"] is None:
            report = inspect_file(corpus / name)
            assert report.bounds_4326 is None, name
            assert "no_crs" in codes(report), name


def test_geostationary_disk_gets_approximate_bounds_from_its_points_on_the_earth(corpus):
    entry = manifest_entries(corpus, "raster")["raster/goes.tif"]
    assert entry["facts"]["bounds_4326"] is None  # the corners are off the Earth

    report = inspect_file(corpus / "raster/goes.tif")

    west, south, east, north = report.bounds_4326
    # The disk seen from 75°W spans about 81° of arc either way.
    assert -160 < west < -145 and 0 < east < 10
    assert -85 < south < -65 and 65 < north < 85
    (finding,) = report.findings
    assert (finding.severity, finding.code) == ("warning", "bounds_4326_approximate")
    assert "geostationary" in finding.message


def test_float_nan_nodata_is_written_as_the_string_nan(corpus):
    report = inspect_file(corpus / "raster/float_nan.tif")

    assert report.model_dump(mode="json")["nodata"] == "NaN"
    assert report.recommended.predictor == 3


def test_corrupt_tile_fails_with_gdals_reason_and_the_file_name(corpus):
    entry = manifest_entries(corpus, "bad")["bad/corrupt.tif"]
    gdal_reason = entry["facts"]["full_read_error"].split("cause: ", 1)[1].split(": ", 1)[1].rstrip(".")

    with pytest.raises(UnreadableRasterError) as raised:
        inspect_file(corpus / "bad/corrupt.tif", source="bronze/corrupt.tif")

    message = str(raised.value)
    assert message.startswith("'bronze/corrupt.tif' cannot be read as a raster: ")
    assert gdal_reason in message
    assert "upload it again" in message


# -- generated rasters, one behaviour each ------------------------------------------------------


def test_rgb_uint8_is_rgb_imagery_for_jpeg(tmp_path):
    report = inspect_file(samples.rgb_uint8(tmp_path / "rgb.tif"))

    assert report.kind == "rgb"
    assert report.recommended.model_dump(exclude={"reason"}) == {
        "compression": "jpeg", "predictor": None, "overview_resampling": "average", "blocksize": 512
    }  # fmt: skip
    assert (report.crs, report.epsg, report.findings) == (samples.UTM_CRS, 32632, [])
    assert report.resolution == [samples.PIXEL_M, samples.PIXEL_M]


def test_rgba_uint8_is_rgba_imagery_for_webp(tmp_path):
    rgb = samples.rgb_uint8(tmp_path / "rgb.tif", size=64)
    with rasterio.open(rgb) as src:
        data = np.concatenate([src.read(), np.full((1, 64, 64), 255, dtype="uint8")])
    path = samples.write_raster(tmp_path / "rgba.tif", data, photometric="RGB", alpha="YES")

    report = inspect_file(path)

    assert (report.kind, report.recommended.compression, report.recommended.predictor) == (
        "rgba",
        "webp",
        None,
    )


def test_float_dem_with_nodata_is_continuous_for_deflate_with_float_predictor(tmp_path):
    report = inspect_file(samples.dem_float32(tmp_path / "dem.tif"))

    assert (report.kind, report.nodata, report.dtypes) == ("continuous", -9999.0, ["float32"])
    assert report.recommended.model_dump(exclude={"reason"}) == {
        "compression": "deflate", "predictor": 3, "overview_resampling": "average", "blocksize": 512
    }  # fmt: skip
    assert report.findings == []


def test_float_dem_without_nodata_is_a_warning(tmp_path):
    data = np.linspace(100, 900, 64 * 64, dtype="float32").reshape(1, 64, 64)

    report = inspect_file(samples.write_raster(tmp_path / "dem.tif", data))

    (finding,) = report.findings
    assert (finding.severity, finding.code) == ("warning", "no_nodata")
    assert "gdal_edit.py -a_nodata" in finding.message


def test_nan_without_nodata_is_a_warning(tmp_path):
    data = np.linspace(100, 900, 64 * 64, dtype="float32").reshape(1, 64, 64)
    data[0, :8, :8] = np.nan

    report = inspect_file(samples.write_raster(tmp_path / "dem.tif", data))

    assert codes(report) == {"nan_without_nodata"}


def test_multiband_uint16_is_multispectral_with_integer_predictor(tmp_path):
    report = inspect_file(samples.multiband_uint16(tmp_path / "ms.tif"))

    assert (report.kind, report.count, report.dtypes) == ("multispectral", 6, ["uint16"] * 6)
    assert (report.recommended.compression, report.recommended.predictor) == ("deflate", 2)
    assert report.recommended.overview_resampling == "average"


def test_few_integer_values_are_categorical_with_mode_overviews(tmp_path):
    report = inspect_file(samples.categorical_uint8(tmp_path / "classes.tif"))

    assert (report.kind, report.nodata) == ("categorical", 0.0)
    assert (report.recommended.compression, report.recommended.predictor) == ("deflate", 2)
    assert report.recommended.overview_resampling == "mode"
    assert report.findings == []


def test_a_palette_band_is_categorical(tmp_path):
    path = samples.write_raster(tmp_path / "palette.tif", np.zeros((1, 8, 8), dtype="uint8"))
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 0, 0, 255)})

    assert inspect_file(path).kind == "categorical"


def test_no_crs_is_an_error_and_leaves_bounds_4326_unknown(tmp_path):
    report = inspect_file(samples.no_crs(tmp_path / "nocrs.tif"))

    assert (report.crs, report.epsg, report.bounds_4326) == (None, None, None)
    (finding,) = report.findings
    assert (finding.severity, finding.code) == ("error", "no_crs")
    assert "gdal_edit.py -a_srs" in finding.message


def test_no_geotransform_is_an_error(tmp_path):
    data = np.ones((1, 8, 8), dtype="uint8")
    path = samples.write_raster(tmp_path / "pixels.tif", data, crs=None, transform=rasterio.Affine.identity())

    report = inspect_file(path)

    assert codes(report) >= {"no_crs", "no_geotransform"}


def test_geographic_bounds_past_the_poles_are_absurd(tmp_path):
    data = (np.arange(64 * 64) % 251).astype("uint8").reshape(1, 64, 64)
    transform = from_origin(170.0, 100.0, 1.0, 1.0)  # longitude 170..234, latitude 36..100
    path = samples.write_raster(tmp_path / "absurd.tif", data, crs="EPSG:4326", transform=transform)

    report = inspect_file(path)

    assert report.bounds == [170.0, 36.0, 234.0, 100.0]
    assert report.bounds_4326 is None
    (finding,) = report.findings
    assert (finding.severity, finding.code) == ("error", "absurd_bounds")
    assert "CENTER_LONG" in finding.message


def test_cloud_optimized_geotiff_is_a_valid_cog(tmp_path):
    report = inspect_file(samples.cloud_optimized(tmp_path / "cog.tif"))

    assert (report.is_cog, report.cog_errors, report.cog_warnings) == (True, [], [])
    assert report.tiled and report.overviews and report.compression == "deflate"
    assert report.block_shape == [512, 512]


def test_large_striped_geotiff_is_not_a_cog(tmp_path):
    report = inspect_file(samples.rgb_uint8(tmp_path / "striped.tif", size=1024))

    assert not report.is_cog and not report.tiled
    assert "The file is greater than 512xH or 512xW, but is not tiled" in report.cog_errors


@pytest.mark.parametrize(
    ("kind", "dtype", "nodata", "expected"),
    [
        ("rgb", "uint8", None, ("jpeg", None, "average")),
        ("rgb", "uint8", 0, ("deflate", 2, "average")),  # JPEG would smear data into nodata
        ("rgba", "uint8", None, ("webp", None, "average")),
        ("rgba", "uint16", None, ("deflate", 2, "average")),
        ("continuous", "float32", -9999, ("deflate", 3, "average")),
        ("continuous", "int16", -32768, ("deflate", 2, "average")),
        ("categorical", "uint8", 0, ("deflate", 2, "mode")),
        ("multispectral", "float64", None, ("deflate", 3, "average")),
    ],
)
def test_recommended_profile_suits_the_kind(kind, dtype, nodata, expected):
    profile = recommend_profile(kind, dtype, nodata)

    assert (profile.compression, profile.predictor, profile.overview_resampling) == expected
    assert profile.blocksize == 512 and profile.reason


# -- open_raster: unreadable files fail for good, naming the file -------------------------------


def test_open_raster_reads_a_container_file(bronze, tmp_path):
    samples.dem_float32(tmp_path / "dem.tif", size=64)
    bronze.put_file(tmp_path / "dem.tif", "dems/dem.tif")

    with open_raster(bronze, "dems/dem.tif") as dataset:
        report = inspect_raster(dataset, source="bronze/dems/dem.tif")

    assert (report.source, report.kind, report.width) == ("bronze/dems/dem.tif", "continuous", 64)


@pytest.mark.parametrize("sample", [samples.rgb_uint8, samples.dem_float32, samples.cloud_optimized])
def test_truncated_geotiff_fails_for_good(bronze, tmp_path, sample):
    whole = sample(tmp_path / "whole.tif").read_bytes()
    bronze.write_bytes("cut/half.tif", whole[: len(whole) // 2])

    with pytest.raises(UnreadableRasterError, match=r"^'bronze/cut/half.tif' cannot be read as a raster: "):
        with open_raster(bronze, "cut/half.tif") as dataset:
            inspect_raster(dataset, source="bronze/cut/half.tif")


@pytest.mark.parametrize("content", [b"", b"not a raster, just text\n", b"II*\x00" + b"\x00" * 60])
def test_file_that_is_not_a_raster_fails_at_open_without_the_local_path(bronze, settings, content):
    bronze.write_bytes("notes/fake.tif", content)

    with pytest.raises(UnreadableRasterError) as raised:
        with open_raster(bronze, "notes/fake.tif"):
            pytest.fail("a file that is not a raster opened")

    message = str(raised.value)
    assert message.startswith("'notes/fake.tif' in container 'bronze' cannot be read as a raster: ")
    assert str(settings.local_storage_root) not in message


def test_open_raster_of_a_missing_file_is_not_found(bronze):
    with pytest.raises(NotFound, match=r"file 'nowhere.tif' not found in container 'bronze'"):
        with open_raster(bronze, "nowhere.tif"):
            pass


# -- RasterSource and its preflight -------------------------------------------------------------


def test_raster_source_takes_the_default_container_and_normalizes_the_path(settings):
    params = RasterSource.model_validate({"blob_name": "a//./b/DEM.TIF"}, context={"settings": settings})

    assert (params.container_name, params.blob_name) == ("bronze", "a/b/DEM.TIF")


@pytest.mark.parametrize("blob_name", ["scan.png", "data/grid.vrt", "README"])
def test_raster_source_refuses_other_extensions_naming_the_supported_ones(settings, blob_name):
    with pytest.raises(ValidationError) as raised:
        RasterSource.model_validate({"blob_name": blob_name}, context={"settings": settings})

    (error,) = raised.value.errors()
    assert error["loc"] == ("blob_name",)
    assert ", ".join(RASTER_EXTENSIONS) in error["msg"]


def test_raster_source_refuses_paths_leaving_the_container(settings):
    with pytest.raises(ValidationError, match="without '..'"):
        RasterSource.model_validate({"blob_name": "../x.tif"}, context={"settings": settings})


def test_check_raster_source_names_a_missing_container_or_file(settings):
    missing_container = RasterSource(blob_name="x.tif", container_name="nowhere")
    missing_file = RasterSource(blob_name="x.tif", container_name="bronze")

    with pytest.raises(NotFound, match="unknown container 'nowhere'"):
        check_raster_source(missing_container, settings)
    with pytest.raises(NotFound, match="file 'x.tif' not found in container 'bronze'"):
        check_raster_source(missing_file, settings)
