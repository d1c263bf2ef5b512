"""STAC items of rasters (projection, raster, eo and file extensions), and writing them to pgstac.

One item per raster file: its main asset is the file. A tiled output is one item too, opened
through its VRT mosaic (the main asset, whose proj/raster fields describe the whole mosaic), with
one extra asset per tile, so that re-cataloguing the source replaces all its tiles at once.
"""

import datetime as dt
import hashlib
import logging
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO

import numpy as np
import pystac
import rasterio
import rasterio.crs
import rasterio.errors
from psycopg import Connection
from pydantic import BaseModel
from pystac.extensions.file import FileExtension
from pystac.utils import str_to_datetime

# CPLE_BaseError is the base of GDAL's own errors; rasterio re-exports it from nowhere public.
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp, MaskFlags
from rio_cogeo.cogeo import cog_validate
from rio_stac import create_stac_item
from rio_stac.stac import get_media_type

from rayetl.errors import PermanentError
from rayetl.pipelines.raster_footprint import footprint, georeference
from rayetl.settings import Settings
from rayetl.store import pgstac
from rayetl.store.db import connect

__all__ = [
    "WrittenItems",
    "file_sha256",
    "raster_collection",
    "raster_item",
    "raster_item_id",
    "write_items",
]

logger = logging.getLogger(__name__)

_HASH_CHUNK_BYTES = 1 << 20
_SHA256_MULTIHASH_PREFIX = "1220"  # multihash: code 0x12 (sha2-256), length 0x20 (32 bytes)
_RGB = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}
_GDAL_ERRORS = (rasterio.errors.RasterioError, CPLE_BaseError)
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def raster_item_id(container: str, path: str) -> str:
    """A deterministic, URL-safe item id for a file of a container: re-cataloguing it replaces it.

    Readable (container and path with '/' as '_') and unique (a hash of the exact container/path,
    since 'a/b.tif' and 'a_b.tif' read alike).
    """
    readable = _ID_UNSAFE.sub("_", f"{container}.{path}")[:96].strip("._-")
    digest = hashlib.sha256(f"{container}/{path}".encode()).hexdigest()[:10]
    return f"{readable}-{digest}"


def file_sha256(handle: BinaryIO) -> str:
    """sha256 hex digest of a binary file object, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    while chunk := handle.read(_HASH_CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def raster_item(
    gdal_path: str,
    *,
    item_id: str,
    collection_id: str,
    href: str,
    asset_key: str = "data",
    asset_title: str | None = None,
    asset_roles: Sequence[str] = ("data",),
    media_type: str | None = None,
    size_bytes: int | None = None,
    sha256: str | None = None,
    modified: dt.datetime | None = None,
    properties: Mapping[str, Any] | None = None,
    extra_assets: Mapping[str, pystac.Asset] | None = None,
    with_eo: bool | None = None,
    stats_max_size: int = 1024,
    gdal_env: Mapping[str, str] | None = None,
    label: str | None = None,
) -> pystac.Item:
    """The STAC item of the raster GDAL reads at gdal_path, with its data asset at href.

    Args:
        gdal_path: what rasterio opens (a local path, or /vsiaz/... with gdal_env).
        href: the asset's URL, where a user fetches the file.
        media_type: None picks the COG media type when the file is a valid COG, else GeoTIFF.
        size_bytes, sha256: the file's size and sha256 hex digest (file:size, file:checksum).
        modified: the file's modification time, the item's datetime when the file has no
            acquisition or TIFFTAG_DATETIME tag (property rayetl:datetime_source says which).
        extra_assets: more assets, e.g. the tiles of a mosaic whose VRT is gdal_path.
        with_eo: add eo:bands; None decides from the bands (imagery: 3+ bands or RGB colours).
        stats_max_size: band statistics come from a read of at most this many pixels on the
            longer side, which GDAL serves from an overview when there is one (approximate).
        gdal_env: GDAL options to open gdal_path with (Container.gdal_env()).
        label: how error messages name the file (default: gdal_path).

    Raises:
        PermanentError: the file cannot be read, has no CRS, or no pixel of it is on the Earth.
    """
    name = label or gdal_path
    try:
        with rasterio.Env(**dict(gdal_env or {})), rasterio.open(gdal_path) as src:
            item = _build_item(
                src,
                name=name,
                item_id=item_id,
                collection_id=collection_id,
                href=href,
                media_type=media_type or _media_type(src, gdal_path),
                modified=modified,
                properties=dict(properties or {}),
                with_eo=_is_imagery(src) if with_eo is None else with_eo,
                stats_max_size=stats_max_size,
            )
    except _GDAL_ERRORS as exc:
        raise PermanentError(f"{name}: cannot read the raster ({_first_line(exc)})") from exc
    asset = item.assets["asset"]
    item.assets.pop("asset")
    asset.title = asset_title
    asset.roles = list(asset_roles)
    item.add_asset(asset_key, asset)
    if size_bytes is not None or sha256 is not None:
        file_ext = FileExtension.ext(asset, add_if_missing=True)
        file_ext.size = size_bytes
        file_ext.checksum = _SHA256_MULTIHASH_PREFIX + sha256 if sha256 else None
    for key, extra in (extra_assets or {}).items():
        item.add_asset(key, extra)
    return item


def _build_item(
    src: rasterio.DatasetReader,
    *,
    name: str,
    item_id: str,
    collection_id: str,
    href: str,
    media_type: str | None,
    modified: dt.datetime | None,
    properties: dict[str, Any],
    with_eo: bool,
    stats_max_size: int,
) -> pystac.Item:
    crs, transform = georeference(src, name)
    geometry, bbox, approximate = footprint(crs, transform, src.width, src.height, name)
    when, when_source = _datetime(src, modified)
    properties["rayetl:datetime_source"] = when_source
    if approximate:
        properties["rayetl:footprint"] = "convex hull of the pixels on the Earth (its corners are not)"
    with warnings.catch_warnings():
        # rio-stac tries TIFFTAG_DATETIME as ISO 8601 and warns on TIFF's own "YYYY:MM:DD HH:MM:SS";
        # _datetime has already read it, and input_datetime takes precedence.
        warnings.filterwarnings("ignore", message="Could not get parse date")
        item = create_stac_item(
            src,
            input_datetime=when,
            collection=collection_id,
            properties=properties,
            id=item_id,
            asset_href=href,
            asset_media_type=media_type,
            with_proj=True,
            with_raster=True,
            with_eo=with_eo,
            raster_max_size=stats_max_size,
            # rio-stac reprojects the four corners to EPSG:4326, which fails when a corner is off
            # the Earth (geostationary views) and splits nothing at the antimeridian. Its footprint
            # is kept in the raster's own CRS here (a no-op transform) and replaced by footprint()'s.
            geographic_crs=crs,
        )
    item.geometry, item.bbox = geometry, bbox
    # rio-stac links the collection by its bare id, a relative href that leads nowhere; the item's
    # "collection" field is what pgstac and STAC APIs read.
    item.remove_links(pystac.RelType.COLLECTION)
    asset = item.assets["asset"]
    _fix_band_statistics(asset.extra_fields.get("raster:bands", []), src, stats_max_size)
    if with_eo:
        _name_rgb_bands(asset.extra_fields.get("eo:bands", []), src)
    return item


def _datetime(src: rasterio.DatasetReader, modified: dt.datetime | None) -> tuple[dt.datetime, str]:
    """The item's datetime and where it came from: the file's tags, else its modification time."""
    for tag, namespace in (("ACQUISITIONDATETIME", "IMAGERY"), ("TIFFTAG_DATETIME", None)):
        value = src.get_tag_item(tag, namespace)
        parsed = _parse_tag_datetime(value) if value else None
        if parsed is not None:
            return parsed, tag
    if modified is None and os.path.isfile(src.name):
        modified = dt.datetime.fromtimestamp(os.path.getmtime(src.name), dt.UTC)
    if modified is not None:
        return (modified if modified.tzinfo else modified.replace(tzinfo=dt.UTC)), "file modification time"
    return dt.datetime.now(dt.UTC), "time of cataloguing (no date tag, modification time unknown)"


def _parse_tag_datetime(value: str) -> dt.datetime | None:
    # TIFF 6.0 writes "YYYY:MM:DD HH:MM:SS" without a time zone: read as UTC.
    try:
        parsed = dt.datetime.strptime(value.strip(), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        try:
            parsed = str_to_datetime(value.strip())
        except ValueError:
            logger.debug("unparsable date tag %r", value)
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _media_type(src: rasterio.DatasetReader, gdal_path: str) -> str | None:
    if src.driver != "GTiff":
        return get_media_type(src)
    is_cog, _, _ = cog_validate(gdal_path, quiet=True)
    return pystac.MediaType.COG if is_cog else pystac.MediaType.GEOTIFF


def _is_imagery(src: rasterio.DatasetReader) -> bool:
    """Imagery (eo:bands apply): three or more bands, or bands coloured red, green or blue."""
    return src.count >= 3 or any(color in _RGB for color in src.colorinterp)


def _fix_band_statistics(bands: list[dict[str, Any]], src: rasterio.DatasetReader, max_size: int) -> None:
    """Correct what rio-stac 0.12 gets wrong about a band's valid pixels, in place."""
    for index, band in enumerate(bands):
        stats = band.get("statistics", {})
        if MaskFlags.all_valid in src.mask_flag_enums[index]:
            # A band without nodata, mask or alpha reads with a scalar mask when every value is
            # finite, and rio-stac counts that as one valid pixel (valid_percent = 100 / size).
            # Integers are all valid; floats are valid where finite (rio-stac masks NaN and inf).
            if np.dtype(src.dtypes[index]).kind == "f":
                data = src.read(index + 1, out_shape=_stats_shape(src, max_size))
                stats["valid_percent"] = float(np.isfinite(data).mean() * 100)
            else:
                stats["valid_percent"] = 100.0
        if stats.get("valid_percent") == 0:
            # With no valid pixel, rio-stac reports the masked mean/min/max as 0: there are none.
            band["statistics"] = {"valid_percent": 0.0}
            band.pop("histogram", None)
        _drop_non_finite(band)


def _stats_shape(src: rasterio.DatasetReader, max_size: int) -> tuple[int, int]:
    """The (rows, cols) rio-stac's get_raster_info reads a band at for its statistics."""
    height, width = src.height, src.width
    if max_size and max(width, height) > max_size:
        ratio = height / width
        if ratio > 1:
            height, width = max_size, math.ceil(max_size / ratio)
        else:
            width, height = max_size, math.ceil(max_size * ratio)
    return height, width


def _drop_non_finite(values: dict[str, Any]) -> None:
    # NaN and infinity are not JSON; pgstac's jsonb would reject the whole item.
    for key, value in list(values.items()):
        if isinstance(value, dict):
            _drop_non_finite(value)
        elif isinstance(value, float) and not math.isfinite(value):
            values[key] = None


def _name_rgb_bands(bands: list[dict[str, Any]], src: rasterio.DatasetReader) -> None:
    for band, color in zip(bands, src.colorinterp, strict=False):
        if color in _RGB:
            band["common_name"] = _RGB[color]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class WrittenItems(BaseModel):
    """What write_items did: items written, whether it created the collection, the new extent."""

    collection_id: str
    item_count: int
    collection_created: bool
    extent: dict[str, Any] | None


def raster_collection(collection_id: str, description: str | None = None) -> pystac.Collection:
    """The collection write_items creates when it is missing (licence 'other', whole-world extent)."""
    return pgstac.default_collection(
        collection_id, description or f"Rasters catalogued by rayetl ({collection_id})", license="other"
    )


def write_items(
    target: pgstac.Target,
    collection_id: str,
    items: Iterable[pystac.Item | dict[str, Any]],
    *,
    description: str | None = None,
    batch_size: int = 500,
) -> WrittenItems:
    """Create the collection if missing, upsert the items in batches, then update its extent.

    Items replace those with the same id. Each batch is one transaction holding the collection's
    lock (pgstac.upsert_items), so concurrent writers into the collection take turns between
    batches. With a connection as target, everything happens in the caller's transaction.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    with _connection(target) as conn:
        created = pgstac.ensure_collection(conn, raster_collection(collection_id, description))
        count = 0
        for batch in _batches(items, batch_size):
            for item in batch:
                _check_collection(item, collection_id)
            count += pgstac.upsert_items(conn, batch)
        extent = pgstac.update_collection_extent(conn, collection_id) if count else None
    logger.info("pgstac collection %s: %d raster items written", collection_id, count)
    return WrittenItems(
        collection_id=collection_id, item_count=count, collection_created=created, extent=extent
    )


@contextmanager
def _connection(target: pgstac.Target) -> Iterator[Connection]:
    if isinstance(target, Connection):
        yield target
        return
    opened = connect(target) if isinstance(target, Settings) else Connection.connect(target)
    with opened as conn:  # commits on success, rolls back when the block raised
        yield conn


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_collection(item: pystac.Item | dict[str, Any], collection_id: str) -> None:
    found = item.collection_id if isinstance(item, pystac.Item) else item.get("collection")
    item_id = item.id if isinstance(item, pystac.Item) else item.get("id")
    if found != collection_id:
        raise PermanentError(
            f"STAC item {item_id!r} belongs to collection {found!r}, not {collection_id!r}: "
            "build it with collection_id set to the collection it is written to"
        )
