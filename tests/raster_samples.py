"""Rasters generated for the tests (seeded): each kind the raster jobs must tell apart and convert.

Every function writes a GeoTIFF at `path` and returns the path. Sizes are small by default so a
test stays quick; pass a larger `size` to exercise tiling.
"""

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

# A UTM 32N (northern Germany) origin with 10 m pixels: projected, with an EPSG code.
UTM_CRS = "EPSG:32632"
UTM_ORIGIN = (500_000.0, 5_900_000.0)
PIXEL_M = 10.0


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM_CRS,
    transform=None,
    nodata: float | None = None,
    **profile,
) -> Path:
    """Write `data` (bands, rows, cols) as a GeoTIFF; extra keywords go to the GDAL profile."""
    count, height, width = data.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    creation = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform if transform is not None else from_origin(*UTM_ORIGIN, PIXEL_M, PIXEL_M),
        "nodata": nodata,
        **profile,
    }
    with rasterio.open(path, "w", **creation) as dst:
        dst.write(data)
    return path


def rgb_uint8(path: Path, size: int = 512, **profile) -> Path:
    """3-band uint8 imagery with smooth gradients and noise, photometric RGB."""
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[0:size, 0:size]
    bands = [
        (rows * 255 // max(size - 1, 1)),
        (cols * 255 // max(size - 1, 1)),
        ((rows + cols) * 255 // max(2 * size - 2, 1)),
    ]
    noise = rng.integers(0, 16, size=(3, size, size))
    data = (np.stack(bands) + noise).clip(0, 255).astype("uint8")
    return write_raster(path, data, photometric="RGB", **profile)


def dem_float32(path: Path, size: int = 512, nodata: float = -9999.0, **profile) -> Path:
    """Single-band float32 elevation with a nodata hole in one corner."""
    rng = np.random.default_rng(2)
    rows, cols = np.mgrid[0:size, 0:size].astype("float32")
    data = 200 + 50 * np.sin(rows / 37) * np.cos(cols / 53) + rng.normal(0, 1, (size, size))
    data = data.astype("float32")
    data[: size // 8, : size // 8] = nodata
    return write_raster(path, data[np.newaxis], nodata=nodata, **profile)


def multiband_uint16(path: Path, size: int = 256, bands: int = 6, **profile) -> Path:
    """Multispectral-like uint16 reflectances (more than 4 bands)."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 10_000, size=(bands, size, size), dtype="uint16")
    return write_raster(path, data, **profile)


def categorical_uint8(path: Path, size: int = 256, classes: int = 6, **profile) -> Path:
    """Land-cover-like classes: a single uint8 band with few distinct values and nodata 0."""
    rng = np.random.default_rng(4)
    blocks = rng.integers(1, classes + 1, size=(size // 16 + 1, size // 16 + 1), dtype="uint8")
    data = np.kron(blocks, np.ones((16, 16), dtype="uint8"))[:size, :size]
    return write_raster(path, data[np.newaxis], nodata=0, **profile)


def no_crs(path: Path, size: int = 64) -> Path:
    """uint8 pixels with a geotransform but no CRS."""
    data = np.arange(size * size, dtype="uint32").reshape(1, size, size) % 251
    return write_raster(path, data.astype("uint8"), crs=None)


def cloud_optimized(path: Path, size: int = 1024) -> Path:
    """An RGB image already written as a COG (GDAL's COG driver)."""
    plain = rgb_uint8(Path(path).with_suffix(".plain.tif"), size=size)
    with rasterio.open(plain) as src:
        data = src.read()
        profile = {k: src.profile[k] for k in ("crs", "transform")}
    write_raster(path, data, driver="COG", compress="DEFLATE", photometric="RGB", **profile)
    plain.unlink()
    return Path(path)
