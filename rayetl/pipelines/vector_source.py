"""Vector sources: what a file is, which layer to read, and its features as Arrow batches (no cleaning).

GDAL (pyogrio's Arrow stream) reads every format but GeoParquet (vector_parquet.py): pyogrio's GDAL
wheels have no Parquet driver. KML goes through GDAL's LIBKML driver (a KMZ through the KML inside
it). A lat/lon CSV is read by pyarrow when it can be typed as GDAL would (vector_csv.py). A batch
holds at most batch_size features, so no process holds the whole file.
"""

import logging
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyogrio
import pyogrio.errors
import pyogrio.raw
from pyproj import CRS

from rayetl.errors import InvalidRequest, NotFound, PermanentError
from rayetl.pipelines.csv_types import readable_without_gdal
from rayetl.pipelines.vector_columns import points_from_columns, wkb_type_codes, wkt_problems
from rayetl.pipelines.vector_csv import (
    check_csv_columns,
    csv_columns,
    csv_crs,
    csv_info,
    read_csv_with_arrow,
    typed_csv,
)
from rayetl.pipelines.vector_formats import (
    ConverterParams,
    LayerInfo,
    RawBatch,
    SourceInfo,
    VectorFormat,
    parse_crs,
)
from rayetl.pipelines.vector_parquet import parquet_file, parquet_info, read_parquet

__all__ = ["check_source", "list_source_layers", "read_batches"]

logger = logging.getLogger(__name__)

# What GDAL can open inside a zip (CSV is left out: it needs converter params per file).
_ZIPPED = {".shp", ".gpkg", ".geojson", ".json", ".kml", ".fgb"}
_GDAL_ERRORS = (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pa.ArrowException)


@dataclass(frozen=True)
class _Layer:
    dataset: str  # what GDAL opens (a path, or a /vsizip/ path to a zip member)
    name: str | None


def list_source_layers(
    path: str | Path, fmt: VectorFormat, *, source_name: str | None = None
) -> list[LayerInfo]:
    """The layers of a source with their feature counts; InvalidRequest if it cannot be opened."""
    source = source_name or Path(path).name
    _require_file(path, source)
    if fmt is VectorFormat.PARQUET:
        return [LayerInfo(name=Path(path).stem, feature_count=parquet_file(path, source).metadata.num_rows)]
    return [info for info, _ in _gdal_layers(path, fmt, source, count=True)]


def check_source(
    path: str | Path,
    fmt: VectorFormat,
    converter: ConverterParams,
    *,
    source_crs: str | None = None,
    source_name: str | None = None,
) -> SourceInfo:
    """The checks made before anything is queued (and again in the task): layer, columns, CRS.

    Raises NotFound for a missing file and InvalidRequest for a file or params that cannot work,
    with a message saying what to change.
    """
    source = source_name or Path(path).name
    _require_file(path, source)
    _check_converter(converter, fmt, source)
    if fmt is VectorFormat.PARQUET:
        info = parquet_info(path, source)
    else:
        info = _gdal_info(path, fmt, converter, source)
    if info.feature_count == 0:
        raise InvalidRequest(f"{source}: layer {info.layer!r} holds zero features; nothing to load")
    if fmt is VectorFormat.CSV:
        check_csv_columns(converter, info.columns, source)
    if info.crs is None and source_crs is None:
        raise InvalidRequest(_no_crs_message(source, fmt))
    try:
        parse_crs(source_crs or info.crs, "source_crs" if source_crs else f"{source}: the file's CRS")
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    return info


def read_batches(
    path: str | Path,
    fmt: VectorFormat,
    converter: ConverterParams,
    *,
    batch_size: int,
    source_name: str | None = None,
) -> Iterator[RawBatch]:
    """The source's features, batch_size at a time, as read (attributes keep their source types)."""
    source = source_name or Path(path).name
    _require_file(path, source)
    if fmt is VectorFormat.PARQUET:
        yield from read_parquet(path, batch_size, source)
        return
    layers = _gdal_layers(path, fmt, source)
    chosen = _choose_layer(source, layers, converter.layer_name)
    try:
        columns = csv_columns(chosen.dataset) if fmt is VectorFormat.CSV and converter.lat_name else None
        if columns and readable_without_gdal(columns.types):
            yield from read_csv_with_arrow(chosen.dataset, converter, columns, batch_size, source)
            return
        if fmt is not VectorFormat.CSV:
            yield from _read_gdal(chosen, fmt, converter, batch_size, source, {})
            return
        with typed_csv(chosen.dataset, converter, columns and columns.types) as (dataset, options):
            yield from _read_gdal(_Layer(dataset, chosen.name), fmt, converter, batch_size, source, options)
    except (*_GDAL_ERRORS, OSError) as exc:  # GDAL's stream reports a corrupt feature as an OSError
        raise PermanentError(
            f"{source}: reading failed ({_gdal_text(exc, path)}); the file may be truncated or corrupt"
        ) from exc


# -- GDAL sources ----------------------------------------------------------------------------------


def _gdal_layers(
    path: str | Path, fmt: VectorFormat, source: str, *, count: bool = False
) -> list[tuple[LayerInfo, _Layer]]:
    """The layers GDAL finds; feature counts (a full scan for some drivers) only if several or asked."""
    datasets = [str(path)]
    if fmt is VectorFormat.ZIP:
        datasets = _zip_datasets(path, source)
    elif fmt is VectorFormat.KMZ:
        datasets = [_kmz_document(path, source)]
    try:
        layers = [
            _Layer(dataset, str(name)) for dataset in datasets for name in pyogrio.list_layers(dataset)[:, 0]
        ]
        count = count or len(layers) > 1
        return [
            (LayerInfo(name=layer.name, feature_count=_count_of(layer) if count else None), layer)
            for layer in layers
        ]
    except _GDAL_ERRORS as exc:
        raise InvalidRequest(
            f"{source}: cannot be read as {fmt.value} ({_gdal_text(exc, path)}); check that the file is "
            "complete and really is that format (re-export or re-upload it)"
        ) from exc


def _count_of(layer: _Layer) -> int | None:
    count = pyogrio.read_info(layer.dataset, layer=layer.name)["features"]
    return count if count >= 0 else None


def _gdal_text(exc: Exception, path: str | Path) -> str:
    """GDAL's message without the local folder (a worker's temporary path means nothing to a user)."""
    text = str(exc)
    for folder in {str(Path(path).parent), str(Path(path).resolve().parent)}:
        text = text.replace(folder + "/", "")
    return text


def _zip_datasets(path: str | Path, source: str) -> list[str]:
    """/vsizip/ paths of the vector files in a zip (each .shp opened on its own: sidecars follow)."""
    members = _zip_members(path, source)
    datasets = [
        f"/vsizip/{Path(path).resolve()}/{member}"
        for member in sorted(members)
        if PurePosixPath(member).suffix.lower() in _ZIPPED
        and not any(part.startswith((".", "__MACOSX")) for part in PurePosixPath(member).parts)
    ]
    if not datasets:
        raise InvalidRequest(
            f"{source}: the zip holds no vector file GDAL can read ({', '.join(sorted(_ZIPPED))}); "
            f"members: {', '.join(members[:20]) or 'none'}"
        )
    return datasets


def _kmz_document(path: str | Path, source: str) -> str:
    """/vsizip/ path of a KMZ's main KML (doc.kml, else the first .kml).

    LIBKML opening the .kmz itself drops ExtendedData fields declared in a <Schema>; opening the
    KML inside it keeps them.
    """
    members = _zip_members(path, source)
    kml = sorted(
        (m for m in members if m.lower().endswith(".kml")), key=lambda m: (m != "doc.kml", "/" in m, m)
    )
    if not kml:
        raise InvalidRequest(f"{source}: a KMZ without a .kml inside (members: {', '.join(members[:20])})")
    return f"/vsizip/{Path(path).resolve()}/{kml[0]}"


def _zip_members(path: str | Path, source: str) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return [info.filename for info in archive.infolist() if not info.is_dir()]
    except zipfile.BadZipFile as exc:
        raise InvalidRequest(f"{source}: not a valid zip archive ({exc}); re-create the zip") from exc


def _choose_layer(source: str, layers: list[tuple[LayerInfo, _Layer]], wanted: str | None) -> _Layer:
    listing = ", ".join(f"{info.name!r} ({_count(info.feature_count)})" for info, _ in layers)
    if wanted is not None:
        for info, layer in layers:
            if info.name == wanted:
                return layer
        raise InvalidRequest(
            f"{source}: no layer {wanted!r}; layers: {listing or 'none'}. Set converter_params.layer_name "
            "to one of them"
        )
    with_features = [(info, layer) for info, layer in layers if info.feature_count != 0]
    if not with_features:
        raise InvalidRequest(f"{source}: the file holds zero features (layers: {listing or 'none'})")
    if len(with_features) > 1:
        raise InvalidRequest(
            f"{source} holds {len(with_features)} layers with features: {listing}. Set "
            "converter_params.layer_name to the one to load"
        )
    return with_features[0][1]


def _count(n: int | None) -> str:
    return "unknown number of features" if n is None else f"{n} feature{'s' if n != 1 else ''}"


def _gdal_info(path: str | Path, fmt: VectorFormat, converter: ConverterParams, source: str) -> SourceInfo:
    layers = _gdal_layers(path, fmt, source)
    chosen = _choose_layer(source, layers, converter.layer_name)
    try:  # without the CSV open options: column names need no type detection (a full scan)
        info = (
            csv_info(chosen.dataset)
            if fmt is VectorFormat.CSV
            else pyogrio.read_info(chosen.dataset, layer=chosen.name)
        )
    except _GDAL_ERRORS as exc:
        raise InvalidRequest(
            f"{source}: cannot read layer {chosen.name!r} ({_gdal_text(exc, path)})"
        ) from exc
    count = info["features"] if info["features"] >= 0 else None
    return SourceInfo(
        format=fmt,
        driver=info["driver"],
        layer=chosen.name,
        layers=[
            LayerInfo(name=found.name, feature_count=count if layer is chosen else found.feature_count)
            for found, layer in layers
        ],
        feature_count=count,
        crs=csv_crs(converter) if fmt is VectorFormat.CSV else info["crs"],
        geometry_type=info["geometry_type"],
        columns=[str(name) for name in info["fields"]],
        uncompressed_size_bytes=_unzipped_size(path) if fmt in (VectorFormat.ZIP, VectorFormat.KMZ) else None,
    )


def _unzipped_size(path: str | Path) -> int | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        return None


def _read_gdal(
    layer: _Layer,
    fmt: VectorFormat,
    converter: ConverterParams,
    batch_size: int,
    source: str,
    options: dict[str, str],
) -> Iterator[RawBatch]:
    first_row = 1
    with warnings.catch_warnings():
        # GDAL warns once per unparsable WKT; those rows are counted and reported instead.
        warnings.filterwarnings("ignore", message="Ignoring invalid WKT", category=RuntimeWarning)
        with pyogrio.raw.open_arrow(
            layer.dataset,
            layer=layer.name,
            batch_size=batch_size,
            use_pyarrow=True,
            return_fids=True,
            **options,
        ) as (meta, reader):
            if fmt is VectorFormat.CSV:  # checked again: the file may have changed since submission
                check_csv_columns(converter, [str(name) for name in meta["fields"]], source)
            crs = csv_crs(converter) if fmt is VectorFormat.CSV else meta["crs"]
            geographic = crs is not None and CRS.from_user_input(crs).is_geographic
            for batch in reader:
                table, geometry, fids = _split(batch, meta["geometry_name"] or "wkb_geometry")
                rows = np.arange(first_row, first_row + table.num_rows)
                first_row += table.num_rows
                if fmt is VectorFormat.CSV and converter.lat_name:
                    lat, lon = table.column(converter.lat_name), table.column(converter.lon_name)
                    geometry, invalid, reasons = points_from_columns(lat, lon, geographic=geographic)
                    yield RawBatch(source, table, geometry, rows, crs, "Point", invalid, reasons)
                    continue
                geometry = _linearize(layer, geometry, fids, options)
                if fmt is not VectorFormat.CSV:
                    yield RawBatch(source, table, geometry, rows, crs, meta["geometry_type"])
                    continue
                invalid, reasons = wkt_problems(table.column(converter.wkt_column), geometry)
                # The WKT text is the geometry itself: not kept as an attribute too.
                table = table.drop_columns([converter.wkt_column])
                yield RawBatch(source, table, geometry, rows, crs, None, invalid, reasons)


def _split(batch: pa.RecordBatch, geometry_name: str) -> tuple[pa.Table, pa.Array, np.ndarray]:
    """Attributes, WKB and FIDs of a GDAL batch.

    By position: GDAL puts the FID first and the geometry last, and a GeoJSON "id" property shares
    the FID's name.
    """
    table = pa.Table.from_batches([batch])
    fids = table.column(0).to_numpy()
    at = table.schema.get_all_field_indices(geometry_name)
    if not at:
        return table.remove_column(0), pa.nulls(table.num_rows, pa.binary()), fids
    geometry = table.column(at[-1]).combine_chunks()
    return table.remove_column(at[-1]).remove_column(0), geometry, fids


# Curved types (CircularString, CompoundCurve, CurvePolygon, MultiCurve, MultiSurface), which GEOS
# cannot hold: GDAL linearizes them when pyogrio reads features one by one instead of as Arrow.
_CURVED_TYPES = np.array([8, 9, 10, 11, 12])


def _linearize(layer: _Layer, geometry: pa.Array, fids: np.ndarray, options: dict[str, str]) -> pa.Array:
    """The batch's WKB with curved geometries replaced by GDAL's linear approximation."""
    curved = np.isin(wkb_type_codes(geometry) % 1000, _CURVED_TYPES)
    if not curved.any():
        return geometry
    _, read_fids, linear, _ = pyogrio.raw.read(
        layer.dataset, layer=layer.name, fids=fids[curved], columns=[], return_fids=True, **options
    )
    by_fid = dict(zip(read_fids.tolist(), linear, strict=True))
    values = geometry.to_numpy(zero_copy_only=False).copy()
    for position, fid in zip(np.flatnonzero(curved), fids[curved].tolist(), strict=True):
        values[position] = by_fid[fid]
    return pa.array(values, type=pa.binary())


# -- checks ----------------------------------------------------------------------------------------


def _require_file(path: str | Path, source: str) -> None:
    if not Path(path).is_file():
        raise NotFound(f"{source}: file not found at {path}")


def _check_converter(converter: ConverterParams, fmt: VectorFormat, source: str) -> None:
    if fmt is VectorFormat.CSV and not converter.has_csv_geometry:
        raise InvalidRequest(
            f"{source}: a CSV needs converter_params lat_name and lon_name (the coordinate columns) or "
            "wkt_column (geometries as WKT)"
        )
    if fmt is not VectorFormat.CSV and (converter.has_csv_geometry or converter.crs):
        raise InvalidRequest(
            f"{source}: lat_name, lon_name, wkt_column and crs apply to CSV files only; remove them "
            f"for a {fmt.value} file (use source_crs for a file without a CRS)"
        )


def _no_crs_message(source: str, fmt: VectorFormat) -> str:
    fix = "converter_params.crs" if fmt is VectorFormat.CSV else "source_crs"
    return f"{source}: no CRS and no source_crs: the file declares no CRS; set {fix} (e.g. 'EPSG:4326')"
