"""write_cog: every allowed profile gives a valid COG with the source's pixels, nodata and masks."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pydantic import ValidationError
from rasterio.enums import MaskFlags
from rasterio.vrt import WarpedVRT
from rasterio.warp import Resampling, reproject
from rio_cogeo.cogeo import cog_validate

from rayetl.errors import PermanentError
from rayetl.pipelines import cog_write
from rayetl.pipelines.cog_write import CogOptions, CogValidationError, gdal_config, output_grid, write_cog
from tests import raster_samples

LOSSLESS = ("deflate", "zstd", "lzw")
SAMPLES = {
    "rgb_uint8": lambda path: raster_samples.rgb_uint8(path, size=600),
    "dem_float32": lambda path: raster_samples.dem_float32(path, size=600),
    "multiband_uint16": raster_samples.multiband_uint16,
    "categorical_uint8": raster_samples.categorical_uint8,
    "no_crs": raster_samples.no_crs,
    "cloud_optimized": lambda path: raster_samples.cloud_optimized(path, size=600),
}


def read_all(path) -> dict:
    with rasterio.open(path) as src:
        return {
            "data": src.read(),
            "mask": src.dataset_mask(),
            "nodata": src.nodata,
            "crs": src.crs,
            "transform": src.transform,
            "dtypes": src.dtypes,
            "has_alpha_or_mask": any(
                flag in (MaskFlags.alpha, MaskFlags.per_dataset) for flag in src.mask_flag_enums[0]
            ),
        }


def assert_same_pixels(source, cog) -> None:
    expected, actual = read_all(source), read_all(cog)
    assert actual["dtypes"] == expected["dtypes"]
    assert np.array_equal(actual["mask"], expected["mask"])
    if expected["has_alpha_or_mask"]:
        # rio-cogeo reads through a WarpedVRT, which writes 0 under the alpha or mask's 0
        valid = expected["mask"] > 0
        assert np.array_equal(actual["data"][:, valid], expected["data"][:, valid])
    else:
        assert np.array_equal(actual["data"], expected["data"], equal_nan=True)
    assert actual["nodata"] == expected["nodata"] or (
        np.isnan(actual["nodata"]) and np.isnan(expected["nodata"])
    )
    assert actual["crs"] == expected["crs"]
    assert actual["transform"].almost_equals(expected["transform"])


@pytest.fixture
def spy_cog_translate(monkeypatch) -> list[dict]:
    """Records the arguments write_cog gives rio-cogeo, then lets the real call run."""
    calls: list[dict] = []
    real = cog_write.cog_translate

    def recording(source, dst_path, dst_kwargs, **kwargs):
        calls.append({"dst_kwargs": dict(dst_kwargs), **kwargs})
        return real(source, dst_path, dst_kwargs, **kwargs)

    monkeypatch.setattr(cog_write, "cog_translate", recording)
    return calls


@pytest.mark.parametrize("compression", LOSSLESS)
@pytest.mark.parametrize("sample", SAMPLES)
def test_write_cog_lossless_is_valid_and_keeps_pixels(tmp_path: Path, sample: str, compression: str):
    source = SAMPLES[sample](tmp_path / f"{sample}.tif")
    dst = tmp_path / "out.tif"

    result = write_cog(str(source), str(dst), CogOptions(compression=compression, threads=1))

    assert cog_validate(dst, quiet=True)[0]
    assert_same_pixels(source, dst)
    assert result.size_bytes == dst.stat().st_size
    assert result.sha256 == hashlib.sha256(dst.read_bytes()).hexdigest()
    with rasterio.open(source) as src:
        assert (result.width, result.height, result.count) == (src.width, src.height, src.count)
        assert result.crs == (src.crs.to_string() if src.crs else None)
        assert rasterio.Affine(*result.transform).almost_equals(src.transform)
    with rasterio.open(dst) as cog:
        assert cog.compression.value.lower() == compression
        assert cog.block_shapes[0] == (512, 512) or max(cog.width, cog.height) <= 512
        if max(cog.width, cog.height) > 512:
            assert cog.overviews(1)


@pytest.mark.parametrize(
    ("sample", "compression"),
    [
        ("rgb_uint8", "jpeg"),
        ("rgb_uint8", "webp"),
        ("categorical_uint8", "jpeg"),
        ("cloud_optimized", "webp"),
    ],
)
def test_write_cog_lossy_is_valid_and_keeps_shape_and_mask(tmp_path: Path, sample: str, compression: str):
    source = SAMPLES[sample](tmp_path / f"{sample}.tif")
    dst = tmp_path / "out.tif"

    result = write_cog(str(source), str(dst), CogOptions(compression=compression, quality=90))

    assert cog_validate(dst, quiet=True)[0]
    expected, actual = read_all(source), read_all(dst)
    assert actual["data"].shape == expected["data"].shape
    # nodata (the categorical sample's 0) becomes an internal mask: lossy codecs would alter it
    assert np.array_equal(actual["mask"], expected["mask"])
    difference = np.abs(actual["data"].astype(int) - expected["data"].astype(int))[:, actual["mask"] > 0]
    assert difference.mean() < 8  # the samples carry 0..15 of noise, which lossy codecs smooth
    assert result.compression == compression


@pytest.mark.parametrize(
    ("sample", "compression", "found"),
    [
        ("dem_float32", "jpeg", "1 band(s) of float32"),
        ("multiband_uint16", "webp", "6 band(s) of uint16"),
        ("categorical_uint8", "webp", "1 band(s) of uint8"),
    ],
)
def test_write_cog_rejects_lossy_compression_it_cannot_hold(tmp_path, sample, compression, found):
    source = SAMPLES[sample](tmp_path / f"{sample}.tif")
    dst = tmp_path / "out.tif"

    with pytest.raises(PermanentError, match=f"{compression} compression needs uint8") as excinfo:
        write_cog(str(source), str(dst), CogOptions(compression=compression))

    assert found in str(excinfo.value)
    assert "Use compression 'deflate' or 'zstd'" in str(excinfo.value)
    assert not dst.exists()


def test_cog_options_reject_mismatched_settings():
    with pytest.raises(ValidationError, match="predictor applies to deflate"):
        CogOptions(compression="jpeg", predictor=2)
    with pytest.raises(ValidationError, match="quality applies to jpeg and webp"):
        CogOptions(compression="zstd", quality=80)
    with pytest.raises(ValidationError, match="'EPSG:999999' is not a CRS"):
        CogOptions(target_crs="EPSG:999999")
    with pytest.raises(ValidationError, match="threads must be >= 1"):
        CogOptions(threads=0)
    with pytest.raises(ValidationError):
        CogOptions(blocksize=500)


def test_write_cog_rejects_float_predictor_on_integers(tmp_path):
    source = raster_samples.categorical_uint8(tmp_path / "cat.tif")
    with pytest.raises(PermanentError, match="predictor 3 is for floating point data, not uint8"):
        write_cog(str(source), str(tmp_path / "out.tif"), CogOptions(predictor=3))


def test_write_cog_applies_nodata_override(tmp_path):
    source = raster_samples.categorical_uint8(tmp_path / "cat.tif")
    dst = tmp_path / "out.tif"

    result = write_cog(str(source), str(dst), CogOptions(nodata=1))

    actual = read_all(dst)
    assert result.nodata == actual["nodata"] == 1
    assert np.array_equal(actual["data"], read_all(source)["data"])
    assert np.array_equal(actual["mask"] == 0, actual["data"][0] == 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_write_cog_configures_the_threads_it_is_given(tmp_path, spy_cog_translate, threads):
    source = raster_samples.rgb_uint8(tmp_path / "rgb.tif", size=600)

    result = write_cog(str(source), str(tmp_path / "out.tif"), CogOptions(threads=threads))

    (call,) = spy_cog_translate
    assert call["config"]["GDAL_NUM_THREADS"] == str(threads)  # overviews, warping
    assert call["dst_kwargs"]["num_threads"] == str(threads)  # block compression
    assert gdal_config(CogOptions(threads=threads))["GDAL_NUM_THREADS"] == str(threads)
    # threads change the speed, never the bytes
    single = write_cog(str(source), str(tmp_path / "single.tif"), CogOptions(threads=1))
    assert result.sha256 == single.sha256


def test_write_cog_keeps_big_intermediates_out_of_memory(tmp_path, spy_cog_translate, monkeypatch):
    source = raster_samples.rgb_uint8(tmp_path / "rgb.tif", size=600)
    write_cog(str(source), str(tmp_path / "small.tif"), CogOptions())
    monkeypatch.setattr(cog_write, "IN_MEMORY_MAX_BYTES", 600 * 600 * 3)
    write_cog(str(source), str(tmp_path / "big.tif"), CogOptions())
    write_cog(str(source), str(tmp_path / "forced.tif"), CogOptions(in_memory=True))

    assert [call["in_memory"] for call in spy_cog_translate] == [True, False, True]
    assert spy_cog_translate[0]["config"]["GDAL_CACHEMAX"] == 256 * 1024 * 1024  # bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "forced.tif", "rgb.tif", "small.tif"]


def test_write_cog_fails_and_removes_an_invalid_cog(tmp_path, monkeypatch):
    def write_plain_geotiff(source, dst_path, dst_kwargs, **kwargs):
        # A real GeoTIFF that is not cloud optimized: striped, no overviews.
        profile = dict(source.profile, driver="GTiff", tiled=False)
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(source.read())

    monkeypatch.setattr(cog_write, "cog_translate", write_plain_geotiff)
    source = raster_samples.rgb_uint8(tmp_path / "rgb.tif", size=600)
    dst = tmp_path / "out.tif"

    with pytest.raises(CogValidationError, match="not a valid COG: .*not tiled") as excinfo:
        write_cog(str(source), str(dst), CogOptions())

    assert isinstance(excinfo.value, PermanentError)
    assert not dst.exists()


@pytest.mark.parametrize("sample", ["dem_float32", "rgb_uint8"])
@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_write_cog_reprojects_like_rasterio(tmp_path, sample, resampling):
    source = SAMPLES[sample](tmp_path / f"{sample}.tif")
    options = CogOptions(target_crs="EPSG:4326", resampling=resampling)
    dst = tmp_path / "out.tif"

    result = write_cog(str(source), str(dst), options)

    assert cog_validate(dst, quiet=True)[0]
    with rasterio.open(source) as src:
        grid = output_grid(src, options)
        expected = warp_whole_grid(src, grid, options)
        approximate = rasterio_reproject(src, grid, resampling)
    actual = read_all(dst)
    assert (result.width, result.height, result.crs) == (grid.width, grid.height, "EPSG:4326")
    assert actual["transform"].almost_equals(rasterio.Affine(*grid.transform))
    assert actual["nodata"] == expected["nodata"] == read_all(source)["nodata"]
    # rasterio's warp of the whole grid in one read, with the same (exact) transformer
    assert np.array_equal(actual["mask"], expected["mask"])
    valid = actual["mask"] > 0
    if resampling == "nearest":
        assert np.array_equal(actual["data"], expected["data"])
        # rasterio.warp.reproject interpolates coordinates within 1/8 px: most pixels agree
        assert (actual["data"][:, valid] == approximate[:, valid]).mean() > 0.9
    else:
        # GDAL sizes a resampling kernel per warp chunk, so block-by-block reads differ slightly
        difference = np.abs(actual["data"].astype(float) - expected["data"].astype(float))[:, valid]
        assert difference.max() <= 2
        assert difference.mean() < 0.05


def warp_whole_grid(src, grid, options: CogOptions) -> dict:
    """rasterio's WarpedVRT of `src` onto `grid`, read at once (no chunking by blocks or tiles)."""
    params = {
        "crs": grid.crs,
        "transform": rasterio.Affine(*grid.transform),
        "width": grid.width,
        "height": grid.height,
        "resampling": Resampling[options.resampling],
        "tolerance": options.warp_tolerance_px,
    }
    params.update({"nodata": src.nodata} if src.nodata is not None else {"add_alpha": True})
    with WarpedVRT(src, **params) as vrt:
        data = vrt.read()
        if src.nodata is None:
            return {"data": data[:-1] * (data[-1] > 0), "mask": data[-1], "nodata": None}
        return {"data": data, "mask": vrt.dataset_mask(), "nodata": vrt.nodata}


def rasterio_reproject(src, grid, resampling: str) -> np.ndarray:
    expected = np.full((src.count, grid.height, grid.width), src.nodata or 0, dtype=src.dtypes[0])
    reproject(
        rasterio.band(src, src.indexes),
        expected,
        dst_transform=rasterio.Affine(*grid.transform),
        dst_crs=grid.crs,
        dst_nodata=src.nodata,
        resampling=Resampling[resampling],
    )
    return expected


def corpus_rasters(corpus_dir: Path) -> list[dict]:
    manifest = json.loads((corpus_dir / "MANIFEST.json").read_text())
    return [f for f in manifest["files"] if f["category"] == "raster" and f["file"].startswith("raster/")]


def test_write_cog_converts_every_corpus_raster(tmp_path, corpus):
    for entry in corpus_rasters(corpus):
        source = corpus / entry["file"]
        dst = tmp_path / f"{source.stem}.cog.tif"

        result = write_cog(str(source), str(dst), CogOptions(threads=1))

        assert cog_validate(dst, quiet=True)[0], entry["file"]
        assert_same_pixels(source, dst)
        facts = entry["facts"]
        assert (result.width, result.height, result.count) == (
            facts["width"],
            facts["height"],
            facts["count"],
        )
        assert result.dtype == facts["dtype"]


@pytest.mark.parametrize("sample", SAMPLES)
def test_one_pass_writes_the_cog_cog_translate_writes(tmp_path, sample, spy_cog_translate):
    """Tiles use GDAL's COG driver: same pixels, mask, nodata, blocks and overviews as rio-cogeo's."""
    source = SAMPLES[sample](tmp_path / f"{sample}.tif")
    options = CogOptions(compression="zstd", overview_resampling="average", threads=1)

    with rasterio.open(source) as src:
        one_pass = cog_write.write_dataset_cog(src, str(tmp_path / "one_pass.tif"), options, one_pass=True)
        two_pass = cog_write.write_dataset_cog(src, str(tmp_path / "two_pass.tif"), options)

    assert len(spy_cog_translate) == 1  # only the second went through rio-cogeo
    assert cog_validate(one_pass.path, quiet=True)[0]
    assert_same_pixels(two_pass.path, one_pass.path)
    with rasterio.open(one_pass.path) as ours, rasterio.open(two_pass.path) as theirs:
        assert ours.block_shapes == theirs.block_shapes
        assert ours.compression == theirs.compression
        assert ours.overviews(1) == theirs.overviews(1)
        for level in range(1, len(ours.overviews(1)) + 1):  # overviews averaged alike
            assert np.array_equal(
                ours.read(out_shape=(ours.count, *_overview_shape(ours, level))),
                theirs.read(out_shape=(theirs.count, *_overview_shape(theirs, level))),
                equal_nan=True,
            )
    assert _overview_block_shapes(one_pass.path) == _overview_block_shapes(two_pass.path)


def _overview_block_shapes(path: str) -> list:
    with rasterio.open(path) as cog:
        levels = len(cog.overviews(1))
    shapes = []
    for level in range(levels):
        with rasterio.open(path, overview_level=level) as overview:
            shapes.append(overview.block_shapes)
    return shapes


def _overview_shape(dataset, level: int) -> tuple[int, int]:
    factor = dataset.overviews(1)[level - 1]
    return -(-dataset.height // factor), -(-dataset.width // factor)


def test_one_pass_leaves_nodata_overrides_and_lossy_masks_to_cog_translate(tmp_path, spy_cog_translate):
    categorical = raster_samples.categorical_uint8(tmp_path / "cat.tif")
    rgb = raster_samples.rgb_uint8(tmp_path / "rgb.tif", size=600)

    with rasterio.open(categorical) as src:
        overridden = cog_write.write_dataset_cog(
            src, str(tmp_path / "a.tif"), CogOptions(nodata=1), one_pass=True
        )
    with rasterio.open(rgb) as src:
        cog_write.write_dataset_cog(
            src, str(tmp_path / "b.tif"), CogOptions(compression="jpeg"), one_pass=True
        )

    assert len(spy_cog_translate) == 2
    assert overridden.nodata == 1
