"""Large rasters as a grid of tile COGs: plan the windows, write one window, mosaic them in a VRT.

The output grid is computed once: the source's own grid, or with target_crs the grid GDAL suggests
for the whole reprojection (`cog_write.output_grid`, deterministic, so every task computes the same
one). That grid is cut into windows aligned to the COG block size, and each task warps its window of
the output grid from the source. So the tiles line up exactly after reprojection: no seams, gaps or
overlaps, which cutting the source first and reprojecting each piece on its own would not give.
"""

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import rasterio
from pydantic import BaseModel, ConfigDict
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window

from rayetl.errors import PermanentError
from rayetl.pipelines.cog_write import (
    CogOptions,
    CogResult,
    OutputGrid,
    check_source,
    output_grid,
    warped_source,
    write_dataset_cog,
)

__all__ = ["TileWindow", "build_vrt", "is_over_tile_size", "plan_tiles", "write_tile_cog"]

logger = logging.getLogger(__name__)

_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}


class TileWindow(BaseModel):
    """One window of the output grid, written as its own COG; `key` names it ("r000c001")."""

    model_config = ConfigDict(frozen=True)

    key: str
    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def window(self) -> Window:
        """The rasterio window."""
        return Window(self.col_off, self.row_off, self.width, self.height)


def is_over_tile_size(width: int, height: int, tile_size_px: int) -> bool:
    """Whether a raster is big enough to be written as tiles rather than one COG."""
    return width > tile_size_px or height > tile_size_px


def plan_tiles(width: int, height: int, tile_size_px: int = 8192, blocksize: int = 512) -> list[TileWindow]:
    """Cut a width × height grid into windows covering it exactly once, row by row.

    Tiles are `tile_size_px` rounded down to a multiple of `blocksize` (at least one block), so
    every tile boundary falls on a block boundary of the COG; the last row and column take the rest.
    """
    if min(width, height, tile_size_px, blocksize) < 1:
        raise ValueError(
            f"plan_tiles needs positive sizes, got width={width} height={height} "
            f"tile_size_px={tile_size_px} blocksize={blocksize}"
        )
    step = max(blocksize, tile_size_px // blocksize * blocksize)
    rows, cols = math.ceil(height / step), math.ceil(width / step)
    digits = max(3, len(str(max(rows, cols) - 1)))
    return [
        TileWindow(
            key=f"r{row:0{digits}d}c{col:0{digits}d}",
            col_off=col * step,
            row_off=row * step,
            width=min(step, width - col * step),
            height=min(step, height - row * step),
        )
        for row in range(rows)
        for col in range(cols)
    ]


def write_tile_cog(
    src_path: str, window: TileWindow, dst_path: str, options: CogOptions, *, grid: OutputGrid | None = None
) -> CogResult:
    """Write one window of the output grid as its own validated COG, with its own geotransform.

    Without target_crs the window is an exact copy of the source's pixels (GDAL's `vrt://` with
    `srcwin`, gdal_translate semantics: values, nodata and masks as they are). With target_crs it is
    warped from the source onto its window of `grid` (computed here when not given).
    """
    with rasterio.open(src_path) as src:
        check_source(src, options, name=src_path)
        grid = grid or output_grid(src, options)
        if window.col_off + window.width > grid.width or window.row_off + window.height > grid.height:
            raise PermanentError(
                f"{src_path}: tile {window.key} reaches beyond the {grid.width}x{grid.height} output grid; "
                "plan the tiles from that grid (plan_tiles(grid.width, grid.height, ...))"
            )
        if options.target_crs is None:
            if "?" in src_path:
                raise PermanentError(
                    f"{src_path}: a '?' in the path cannot be used in GDAL's vrt:// connection string; "
                    "rename the file or give its /vsi path without a query string"
                )
            srcwin = f"{window.col_off},{window.row_off},{window.width},{window.height}"
            with rasterio.open(f"vrt://{src_path}?srcwin={srcwin}") as piece:
                return write_dataset_cog(piece, dst_path, options, one_pass=True)
        transform = rasterio.Affine(*grid.transform) @ rasterio.Affine.translation(
            window.col_off, window.row_off
        )
        tile_grid = OutputGrid(
            crs=grid.crs, transform=tuple(transform)[:6], width=window.width, height=window.height
        )
        with warped_source(src, tile_grid, options) as vrt:
            return write_dataset_cog(vrt, dst_path, options, nodata_applied=True, one_pass=True)


def build_vrt(tile_paths: Sequence[str], dst_path: str, *, source_names: Sequence[str] | None = None) -> str:
    """Write a VRT mosaic of aligned tiles (same CRS, resolution, bands) with paths relative to it.

    GDAL's BuildVRT is not reachable from rasterio, and these tiles come from one grid, so the XML
    is simple: one SimpleSource per tile and band, plus a mask band when the tiles carry one.

    source_names: the tiles' paths as the VRT should name them, relative to it, when they are read
    from elsewhere than where the VRT will find them (e.g. staged on a blob store).

    Raises:
        PermanentError: no tiles, or tiles that do not share one grid.
    """
    if not tile_paths:
        raise PermanentError(f"{dst_path}: no tiles to mosaic")
    tiles = [_describe_tile(path) for path in tile_paths]
    vrt_dir = Path(dst_path).resolve().parent
    for tile, name in zip(tiles, source_names or [None] * len(tiles), strict=True):
        tile["name"] = name or os.path.relpath(Path(tile["path"]).resolve(), vrt_dir)
    first = tiles[0]
    inverse = ~first["transform"]
    for tile in tiles:
        _check_same_grid(first, tile)
        col, row = inverse @ (tile["transform"].c, tile["transform"].f)
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            raise PermanentError(f"{tile['path']}: not aligned to the pixel grid of {first['path']}")
        tile["offset"] = (round(col), round(row))
    min_col = min(t["offset"][0] for t in tiles)
    min_row = min(t["offset"][1] for t in tiles)
    width = max(t["offset"][0] + t["width"] for t in tiles) - min_col
    height = max(t["offset"][1] + t["height"] for t in tiles) - min_row
    origin = first["transform"] @ rasterio.Affine.translation(min_col, min_row)  # offsets are in its pixels

    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if first["crs"]:
        ET.SubElement(root, "SRS").text = first["crs"]
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in origin.to_gdal())
    for band in range(1, first["count"] + 1):
        element = ET.SubElement(root, "VRTRasterBand", dataType=first["gdal_type"], band=str(band))
        if first["nodata"] is not None:
            ET.SubElement(element, "NoDataValue").text = repr(first["nodata"])
        ET.SubElement(element, "ColorInterp").text = first["colorinterp"][band - 1].name.capitalize()
        if band == 1 and first["colormap"]:
            table = ET.SubElement(element, "ColorTable")
            for _, rgba in sorted(first["colormap"].items()):
                ET.SubElement(table, "Entry", **{f"c{i + 1}": str(v) for i, v in enumerate(rgba)})
        for tile in tiles:
            _add_source(element, tile, str(band), first["gdal_type"], min_col, min_row)
    if first["has_mask"]:
        mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
        for tile in tiles:
            _add_source(mask, tile, "mask,1", "Byte", min_col, min_row)
    ET.indent(root)
    ET.ElementTree(root).write(dst_path, encoding="utf-8")
    logger.debug("wrote VRT %s over %d tiles (%dx%d)", dst_path, len(tiles), width, height)
    return str(dst_path)


def _describe_tile(path: str) -> dict:
    with rasterio.open(path) as tile:
        flags = tile.mask_flag_enums
        return {
            "path": str(path),
            "crs": tile.crs.to_wkt() if tile.crs else None,
            "transform": tile.transform,
            "width": tile.width,
            "height": tile.height,
            "count": tile.count,
            "dtypes": tile.dtypes,
            "gdal_type": _GDAL_TYPES[tile.dtypes[0]],
            "nodata": tile.nodata,
            "colorinterp": tile.colorinterp,
            "colormap": tile.colormap(1) if tile.colorinterp[0] == ColorInterp.palette else None,
            "has_mask": all(band_flags == [MaskFlags.per_dataset] for band_flags in flags),
            "block": tile.block_shapes[0],
        }


def _check_same_grid(first: dict, tile: dict) -> None:
    same = (
        tile["crs"] == first["crs"]
        and tile["count"] == first["count"]
        and tile["dtypes"] == first["dtypes"]
        and tile["has_mask"] == first["has_mask"]
        and _same_value(tile["nodata"], first["nodata"])
        and all(math.isclose(tile["transform"][i], first["transform"][i], rel_tol=1e-9) for i in (0, 1, 3, 4))
    )
    if not same:
        raise PermanentError(
            f"{tile['path']}: does not share the grid of {first['path']} (CRS, resolution, band count, "
            "data type, nodata and mask must all match to mosaic tiles in one VRT)"
        )


def _same_value(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _add_source(
    band: ET.Element, tile: dict, source_band: str, gdal_type: str, min_col: int, min_row: int
) -> None:
    # SimpleSource copies every pixel, nodata included: the tiles never overlap, so none may hide another.
    source = ET.SubElement(band, "SimpleSource")
    ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = tile["name"]
    ET.SubElement(source, "SourceBand").text = source_band
    block_y, block_x = tile["block"]
    ET.SubElement(
        source,
        "SourceProperties",
        RasterXSize=str(tile["width"]),
        RasterYSize=str(tile["height"]),
        DataType=gdal_type,
        BlockXSize=str(block_x),
        BlockYSize=str(block_y),
    )
    size = {"xSize": str(tile["width"]), "ySize": str(tile["height"])}
    ET.SubElement(source, "SrcRect", xOff="0", yOff="0", **size)
    col, row = tile["offset"]
    ET.SubElement(source, "DstRect", xOff=str(col - min_col), yOff=str(row - min_row), **size)
