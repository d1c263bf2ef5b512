"""Tiling: windows cover the grid exactly once, tile COGs are valid, their VRT mosaic is the source."""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import MaskFlags
from rasterio.windows import transform as window_transform
from rio_cogeo.cogeo import cog_validate

from rayetl.errors import PermanentError
from rayetl.pipelines.cog_write import CogOptions, output_grid, write_cog
from rayetl.pipelines.raster_tiles import build_vrt, is_over_tile_size, plan_tiles, write_tile_cog
from tests import raster_samples

WIDTH, HEIGHT = 1000, 700  # ragged: 256-px tiles leave a 232-px last column and a 188-px last row


def rgb_with_mask(path: Path) -> Path:
    """1000×700 RGB uint8 with an internal mask (no nodata) hiding a corner."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, size=(3, HEIGHT, WIDTH), dtype="uint8")
    raster_samples.write_raster(path, data, photometric="RGB")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        mask = np.full((HEIGHT, WIDTH), 255, dtype="uint8")
        mask[:300, :400] = 0
        dst.write_mask(mask)
    return path


def dem_with_nodata(path: Path) -> Path:
    """1000×700 float32 with nodata -9999 in a band across tile boundaries."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype("float32")
    data = (100 + rows / 7 + np.sin(cols / 11)).astype("float32")
    data[200:330, :] = -9999
    return raster_samples.write_raster(path, data[np.newaxis], nodata=-9999.0)


SOURCES = {"rgb_with_mask": rgb_with_mask, "dem_with_nodata": dem_with_nodata}


def write_tiles(source: Path, out: Path, options: CogOptions, tile_size_px: int = 256) -> tuple[list, Path]:
    with rasterio.open(source) as src:
        grid = output_grid(src, options)
    tiles = plan_tiles(grid.width, grid.height, tile_size_px, blocksize=options.blocksize)
    out.mkdir()
    results = [
        write_tile_cog(str(source), tile, str(out / f"{tile.key}.tif"), options, grid=grid) for tile in tiles
    ]
    vrt = build_vrt([r.path for r in results], str(out / "mosaic.vrt"))
    return list(zip(tiles, results, strict=True)), Path(vrt)


def read(path) -> dict:
    with rasterio.open(path) as src:
        return {
            "data": src.read(),
            "mask": src.dataset_mask(),
            "nodata": src.nodata,
            "crs": src.crs,
            "transform": src.transform,
            "shape": (src.count, src.height, src.width),
        }


def test_plan_tiles_covers_a_ragged_grid_exactly_once():
    tiles = plan_tiles(WIDTH, HEIGHT, tile_size_px=256, blocksize=256)

    assert [t.key for t in tiles[:5]] == ["r000c000", "r000c001", "r000c002", "r000c003", "r001c000"]
    assert len(tiles) == 3 * 4
    assert sorted({t.width for t in tiles}) == [232, 256]
    assert sorted({t.height for t in tiles}) == [188, 256]
    assert sum(t.width * t.height for t in tiles) == WIDTH * HEIGHT
    coverage = np.zeros((HEIGHT, WIDTH), dtype=int)
    for tile in tiles:
        coverage[tile.row_off : tile.row_off + tile.height, tile.col_off : tile.col_off + tile.width] += 1
        assert tile.col_off % 256 == 0 and tile.row_off % 256 == 0  # on block boundaries
    assert (coverage == 1).all()
    assert plan_tiles(WIDTH, HEIGHT, 256, 256) == tiles  # deterministic


def test_plan_tiles_rounds_the_tile_size_to_whole_blocks():
    assert {t.width for t in plan_tiles(2048, 512, tile_size_px=700, blocksize=256)} == {512}
    assert {t.width for t in plan_tiles(1024, 64, tile_size_px=100, blocksize=256)} == {256}
    assert plan_tiles(10, 10, tile_size_px=8192, blocksize=512)[0].model_dump() == {
        "key": "r000c000",
        "col_off": 0,
        "row_off": 0,
        "width": 10,
        "height": 10,
    }
    assert plan_tiles(16 * 1001, 16, tile_size_px=16, blocksize=16)[-1].key == "r0000c1000"
    with pytest.raises(ValueError, match="positive sizes"):
        plan_tiles(0, 10, 256, 256)
    assert is_over_tile_size(8193, 100, 8192) and not is_over_tile_size(8192, 8192, 8192)


@pytest.mark.parametrize("compression", ["deflate", "zstd"])
@pytest.mark.parametrize("sample", SOURCES)
def test_tile_cogs_and_their_vrt_reproduce_the_source(tmp_path, sample, compression):
    source = SOURCES[sample](tmp_path / f"{sample}.tif")
    options = CogOptions(compression=compression, blocksize=256, threads=1)

    written, vrt = write_tiles(source, tmp_path / "tiles", options)

    expected = read(source)
    for tile, result in written:
        assert cog_validate(result.path, quiet=True)[0], tile.key
        piece = read(result.path)
        rows = slice(tile.row_off, tile.row_off + tile.height)
        cols = slice(tile.col_off, tile.col_off + tile.width)
        assert_same_pixels(
            piece["data"], piece["mask"], expected["data"][:, rows, cols], expected["mask"][rows, cols]
        )
        assert piece["nodata"] == expected["nodata"]
        assert piece["transform"].almost_equals(window_transform(tile.window, expected["transform"]))
        assert (result.width, result.height) == (tile.width, tile.height)
    mosaic = read(vrt)
    assert mosaic["shape"] == expected["shape"]
    assert mosaic["crs"] == expected["crs"]
    assert mosaic["transform"].almost_equals(expected["transform"])
    assert mosaic["nodata"] == expected["nodata"]
    assert_same_pixels(mosaic["data"], mosaic["mask"], expected["data"], expected["mask"])


def assert_same_pixels(data, mask, expected_data, expected_mask) -> None:
    """Same mask and values; under an internal mask's 0, rio-cogeo's WarpedVRT writes 0."""
    assert np.array_equal(mask, expected_mask)
    assert np.array_equal(
        data, np.where(expected_mask > 0, expected_data, 0 * expected_data), equal_nan=True
    ) or (np.array_equal(data, expected_data))


@pytest.mark.parametrize("sample", SOURCES)
def test_reprojected_tiles_line_up_with_the_untiled_reprojection(tmp_path, sample):
    source = SOURCES[sample](tmp_path / f"{sample}.tif")
    options = CogOptions(target_crs="EPSG:4326", blocksize=256, threads=1)

    written, vrt = write_tiles(source, tmp_path / "tiles", options)
    whole = write_cog(str(source), str(tmp_path / "whole.tif"), options)

    assert len(written) > 4
    assert all(cog_validate(result.path, quiet=True)[0] for _, result in written)
    mosaic, expected = read(vrt), read(whole.path)
    assert mosaic["shape"] == expected["shape"]
    assert mosaic["crs"] == expected["crs"]
    assert mosaic["transform"].almost_equals(expected["transform"])
    assert np.array_equal(mosaic["mask"], expected["mask"])
    assert np.array_equal(mosaic["data"], expected["data"])
    assert sum(t.width * t.height for t, _ in written) == whole.width * whole.height


def test_vrt_uses_relative_paths_and_survives_a_move(tmp_path):
    source = dem_with_nodata(tmp_path / "dem.tif")
    _, vrt = write_tiles(source, tmp_path / "tiles", CogOptions(blocksize=256, threads=1))

    names = [el for el in ET.parse(vrt).iter("SourceFilename")]
    assert {el.get("relativeToVRT") for el in names} == {"1"}
    assert all(not Path(el.text).is_absolute() for el in names)
    moved = tmp_path / "moved"
    (tmp_path / "tiles").rename(moved)
    assert np.array_equal(read(moved / "mosaic.vrt")["data"], read(source)["data"])


def test_vrt_carries_the_tiles_mask(tmp_path):
    source = rgb_with_mask(tmp_path / "rgb.tif")
    _, vrt = write_tiles(source, tmp_path / "tiles", CogOptions(blocksize=256, threads=1))

    with rasterio.open(vrt) as mosaic:
        assert mosaic.mask_flag_enums[0] == [MaskFlags.per_dataset]
        assert mosaic.nodata is None


def test_build_vrt_refuses_tiles_of_different_grids(tmp_path):
    first = raster_samples.categorical_uint8(tmp_path / "a.tif", size=64)
    other_crs = raster_samples.write_raster(
        tmp_path / "b.tif", np.ones((1, 64, 64), "uint8"), crs="EPSG:3857", nodata=0
    )
    with pytest.raises(PermanentError, match="does not share the grid of"):
        build_vrt([str(first), str(other_crs)], str(tmp_path / "m.vrt"))
    shifted = raster_samples.write_raster(
        tmp_path / "c.tif",
        np.ones((1, 64, 64), "uint8"),
        nodata=0,
        transform=rasterio.transform.from_origin(500_003.0, 5_900_000.0, 10, 10),
    )
    with pytest.raises(PermanentError, match="not aligned to the pixel grid"):
        build_vrt([str(first), str(shifted)], str(tmp_path / "m.vrt"))
    with pytest.raises(PermanentError, match="no tiles to mosaic"):
        build_vrt([], str(tmp_path / "m.vrt"))


def test_write_tile_cog_refuses_a_window_outside_the_grid(tmp_path):
    source = raster_samples.categorical_uint8(tmp_path / "cat.tif", size=64)
    (tile,) = plan_tiles(128, 128, 256, 256)
    with pytest.raises(PermanentError, match="reaches beyond the 64x64 output grid"):
        write_tile_cog(str(source), tile, str(tmp_path / "t.tif"), CogOptions())


def test_corpus_rgb_tiles_reproduce_the_source(tmp_path, corpus):
    source = corpus / "raster" / "RGB.byte.tif"  # 791×718, nodata 0
    _, vrt = write_tiles(source, tmp_path / "tiles", CogOptions(blocksize=256, threads=1))

    mosaic, expected = read(vrt), read(source)
    assert mosaic["shape"] == expected["shape"] == (3, 718, 791)
    assert mosaic["nodata"] == expected["nodata"] == 0
    assert np.array_equal(mosaic["data"], expected["data"])
    assert np.array_equal(mosaic["mask"], expected["mask"])
