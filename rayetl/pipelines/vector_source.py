"""Vector sources: what a file is, which layer to read, and its features as Arrow batches (no cleaning).

GDAL (pyogrio's Arrow stream) reads every format but GeoParquet, which pyarrow reads: pyogrio's GDAL
wheels have no Parquet driver. KML goes through GDAL's LIBKML driver (a KMZ through the KML inside
it). A batch holds at most batch_size features, so no process holds the whole file.
"""

import logging
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pyogrio.errors
import pyogrio.raw
from pydantic import BaseModel, Field, model_validator
from pyproj import CRS
from pyproj.exceptions import CRSError

from rayetl.errors import InvalidRequest, NotFound, PermanentError
from rayetl.pipelines.contract import JobParams
from rayetl.pipelines.csv_types import (
    CsvNotTyped,
    column_types,
    read_typed,
    readable_without_gdal,
    write_csvt,
)
from rayetl.pipelines.vector_columns import (
    geoparquet_columns,
    points_from_columns,
    wkb_type_codes,
    wkt_problems,
)

__all__ = [
    "ConverterParams",
    "LayerInfo",
    "RawBatch",
    "SourceInfo",
    "VectorFormat",
    "check_source",
    "infer_format",
    "list_source_layers",
    "parse_crs",
    "read_batches",
]

logger = logging.getLogger(__name__)


class VectorFormat(StrEnum):
    """A vector file format rayetl loads."""

    CSV = "csv"
    GEOJSON = "geojson"
    GPKG = "gpkg"
    KML = "kml"
    KMZ = "kmz"
    SHP = "shp"
    ZIP = "zip"
    FGB = "fgb"
    PARQUET = "parquet"


_EXTENSIONS = {fmt.value: fmt for fmt in VectorFormat} | {"json": VectorFormat.GEOJSON}
# What GDAL can open inside a zip (CSV is left out: it needs converter params per file).
_ZIPPED = {".shp", ".gpkg", ".geojson", ".json", ".kml", ".fgb"}
_GDAL_ERRORS = (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pa.ArrowException)


def infer_format(blob_name: str, file_extension: str | None = None) -> VectorFormat:
    """The format from file_extension, else from the name's extension; InvalidRequest if unsupported."""
    known = ", ".join(sorted(_EXTENSIONS))
    suffix = PurePosixPath(blob_name).suffix.lower().lstrip(".")
    if file_extension is not None:
        given = file_extension.lower().lstrip(".")
        if given not in _EXTENSIONS:
            raise InvalidRequest(f"file_extension {file_extension!r} is not supported; use one of: {known}")
        if suffix in _EXTENSIONS and _EXTENSIONS[suffix] != _EXTENSIONS[given]:
            raise InvalidRequest(
                f"{blob_name!r} is named like a .{suffix} file but file_extension is {file_extension!r}; "
                "leave file_extension out to use the name's extension, or fix the one that is wrong"
            )
        return _EXTENSIONS[given]
    if not suffix:
        raise InvalidRequest(f"{blob_name!r} has no extension; set file_extension to one of: {known}")
    if suffix not in _EXTENSIONS:
        raise InvalidRequest(
            f"{blob_name!r}: extension .{suffix} is not supported; supported: {known} "
            "(set file_extension if the name's extension is wrong)"
        )
    return _EXTENSIONS[suffix]


class ConverterParams(JobParams):
    """How to read a source: coordinate columns of a CSV, and which layer of a multi-layer file."""

    lat_name: str | None = Field(None, min_length=1, description="CSV column holding latitudes (Y).")
    lon_name: str | None = Field(None, min_length=1, description="CSV column holding longitudes (X).")
    wkt_column: str | None = Field(None, min_length=1, description="CSV column holding WKT geometries.")
    crs: str | None = Field(
        None, description="CRS of a CSV's coordinates (default EPSG:4326 for lat/lon columns)."
    )
    layer_name: str | None = Field(None, min_length=1, description="Layer of a GeoPackage, zip or KML.")
    on_invalid: Literal["fail", "skip"] = Field(
        "fail", description="Rows that cannot be loaded: fail the job, or skip them and report them."
    )

    @model_validator(mode="after")
    def _check(self) -> "ConverterParams":
        if self.wkt_column and (self.lat_name or self.lon_name):
            raise ValueError("Specify either wkt_column or lat_name and lon_name, not both")
        if bool(self.lat_name) != bool(self.lon_name):
            given = "lat_name" if self.lat_name else "lon_name"
            raise ValueError(f"Specify lat_name and lon_name together (only {given} was given)")
        if self.crs is not None:
            parse_crs(self.crs, "converter_params.crs")
        return self

    @property
    def has_csv_geometry(self) -> bool:
        """Whether the params say where a CSV's geometries are."""
        return bool(self.wkt_column or self.lat_name)


def parse_crs(value: str, where: str) -> CRS:
    """A CRS pyproj understands; ValueError naming where the value came from otherwise."""
    try:
        return CRS.from_user_input(value)
    except CRSError as exc:
        raise ValueError(
            f"{where} {value!r} is not a CRS pyproj knows ({exc}); use an authority code such as 'EPSG:4326'"
        ) from exc


class LayerInfo(BaseModel):
    """A layer of a source and its feature count (None when the driver cannot tell without a scan)."""

    name: str
    feature_count: int | None


class SourceInfo(BaseModel):
    """What check_source found: the layer to read, its CRS, declared geometry type and columns."""

    format: VectorFormat
    driver: str | None
    layer: str | None
    layers: list[LayerInfo]
    feature_count: int | None
    crs: str | None
    geometry_type: str | None
    columns: list[str]
    uncompressed_size_bytes: int | None = None


@dataclass(frozen=True)
class RawBatch:
    """One batch of features as read: attributes, WKB geometry, and where each row came from.

    invalid: positions (in this batch) of rows the reader could not turn into a geometry (bad WKT,
    out-of-range coordinates); their geometry is null. reasons: why, for the first of them.
    """

    source: str
    attributes: pa.Table
    geometry: pa.Array
    rows: np.ndarray  # 1-based position of each feature in the source, for error reports
    crs: str | None
    declared_type: str | None = None
    invalid: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    reasons: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.attributes.num_rows


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
        return [LayerInfo(name=Path(path).stem, feature_count=_parquet_file(path, source).metadata.num_rows)]
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
        info = _parquet_info(path, source)
    else:
        info = _gdal_info(path, fmt, converter, source)
    if info.feature_count == 0:
        raise InvalidRequest(f"{source}: layer {info.layer!r} holds zero features; nothing to load")
    if fmt is VectorFormat.CSV:
        _check_csv_columns(converter, info.columns, source)
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
        yield from _read_parquet(path, batch_size, source)
        return
    layers = _gdal_layers(path, fmt, source)
    chosen = _choose_layer(source, layers, converter.layer_name)
    try:
        columns = _csv_columns(chosen) if fmt is VectorFormat.CSV and converter.lat_name else None
        if columns and readable_without_gdal(columns.types):
            yield from _read_csv_with_arrow(chosen, converter, columns, batch_size, source)
            return
        with _typed_csv(chosen, fmt, converter, columns and columns.types) as (chosen, options):
            yield from _read_gdal(chosen, fmt, converter, batch_size, source, options)
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
            _csv_info(chosen.dataset)
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
        crs=_csv_crs(converter) if fmt is VectorFormat.CSV else info["crs"],
        geometry_type=info["geometry_type"],
        columns=[str(name) for name in info["fields"]],
        uncompressed_size_bytes=_unzipped_size(path) if fmt in (VectorFormat.ZIP, VectorFormat.KMZ) else None,
    )


def _csv_info(path: str) -> dict:
    """What read_info says of a CSV, without GDAL's feature count: it parses every row (~1 s per 1M).

    The count is of the lines after the header, which is the number of features unless a quoted
    value spans lines or lines are blank; it only sizes the chunks and tells an empty file.
    """
    with pyogrio.raw.open_arrow(path, batch_size=1, use_pyarrow=True) as (meta, _):
        pass
    return {
        "driver": "CSV",
        "fields": meta["fields"],
        "geometry_type": None,
        "crs": None,
        "features": max(_count_lines(path) - 1, 0),
    }


_COUNT_BLOCK_BYTES = 16 * 2**20
_EXACT_COUNT_BELOW = 10_000  # lines; a small file's blank lines are told apart, so that an empty one shows


def _count_lines(path: str) -> int:
    """The lines of a file, counted by newlines a block at a time (~0.03 s for 1M lines, not 0.25 s).

    Below _EXACT_COUNT_BELOW lines they are read one by one and blank ones are left out, so that a
    header followed by blank lines counts as empty.
    """
    lines, last = 0, b"\n"
    with open(path, "rb") as file:
        while block := file.read(_COUNT_BLOCK_BYTES):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without its newline
    if lines < _EXACT_COUNT_BELOW:
        with open(path, "rb") as file:
            lines = sum(1 for line in file if line.strip())
    return lines


def _unzipped_size(path: str | Path) -> int | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        return None


def _open_options(fmt: VectorFormat, converter: ConverterParams) -> dict[str, str]:
    if fmt is not VectorFormat.CSV:
        return {}
    # Types are detected from the whole file (SIZE_LIMIT=0) so that one type holds for every batch
    # and no late value is cut to fit; quoted values and values with leading zeros stay text.
    options = {"AUTODETECT_TYPE": "YES", "AUTODETECT_SIZE_LIMIT": "0", "EMPTY_STRING_AS_NULL": "YES"}
    if converter.wkt_column:
        options |= {"GEOM_POSSIBLE_NAMES": converter.wkt_column, "KEEP_GEOM_COLUMNS": "YES"}
    return options


@dataclass(frozen=True)
class _CsvColumns:
    names: list[str]  # as GDAL names them (blank or repeated names included)
    types: list[str]  # GDAL's types, found by csv_types


def _csv_columns(layer: _Layer) -> _CsvColumns | None:
    """A CSV's columns with GDAL's types (see csv_types.py), or None to let GDAL detect them itself."""
    try:
        types = column_types(layer.dataset)
    except CsvNotTyped as exc:
        logger.info("%s: GDAL detects the CSV types itself (%s)", layer.dataset, exc)
        return None
    with pyogrio.raw.open_arrow(layer.dataset, batch_size=1, use_pyarrow=True) as (meta, _):
        names = [str(name) for name in meta["fields"]]
    return _CsvColumns(names, types) if len(types) == len(names) else None


@contextmanager
def _typed_csv(
    layer: _Layer, fmt: VectorFormat, converter: ConverterParams, types: list[str] | None
) -> Iterator[tuple[_Layer, dict[str, str]]]:
    """The layer GDAL reads and its open options: with `types`, the CSV beside a .csvt of them.

    GDAL then reads the CSV once instead of scanning it for types first (see csv_types.py). The
    file is linked into a temporary folder, never written beside the user's file.
    """
    options = _open_options(fmt, converter)
    if types is None:
        yield layer, options
        return
    with tempfile.TemporaryDirectory(prefix="rayetl-csv-") as folder:
        link = Path(folder) / Path(layer.dataset).name
        link.symlink_to(Path(layer.dataset).absolute())
        write_csvt(link.with_suffix(".csvt"), types)
        options = {name: value for name, value in options.items() if not name.startswith("AUTODETECT_")}
        yield _Layer(str(link), layer.name), options


def _read_csv_with_arrow(
    layer: _Layer, converter: ConverterParams, columns: _CsvColumns, batch_size: int, source: str
) -> Iterator[RawBatch]:
    """A lat/lon CSV read by pyarrow, typed as GDAL types it: ~1/7 of the time GDAL's reader takes."""
    _check_csv_columns(converter, columns.names, source)  # checked again: the file may have changed since
    crs = _csv_crs(converter)
    geographic = CRS.from_user_input(crs).is_geographic
    first_row = 1
    try:
        for table in read_typed(layer.dataset, columns.names, columns.types, batch_size):
            rows = np.arange(first_row, first_row + table.num_rows)
            first_row += table.num_rows
            lat, lon = table.column(converter.lat_name), table.column(converter.lon_name)
            geometry, invalid, reasons = points_from_columns(lat, lon, geographic=geographic)
            yield RawBatch(source, table, geometry, rows, crs, "Point", invalid, reasons)
    except pa.ArrowInvalid as exc:  # the file changed between the two passes, or was cut short
        raise PermanentError(
            f"{source}: reading failed ({exc}); the file may have changed or be corrupt"
        ) from exc


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
                _check_csv_columns(converter, [str(name) for name in meta["fields"]], source)
            crs = _csv_crs(converter) if fmt is VectorFormat.CSV else meta["crs"]
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


def _csv_crs(converter: ConverterParams) -> str | None:
    # Latitude/longitude columns are WGS84 unless said otherwise; WKT can be in any CRS.
    return converter.crs or ("EPSG:4326" if converter.lat_name else None)


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


# -- GeoParquet ------------------------------------------------------------------------------------


def _parquet_file(path: str | Path, source: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidRequest(
            f"{source}: not a readable Parquet file ({exc}); re-export or re-upload it"
        ) from exc


def _parquet_info(path: str | Path, source: str) -> SourceInfo:
    parquet = _parquet_file(path, source)
    geo = geoparquet_columns(parquet.schema_arrow, source)
    rows = parquet.metadata.num_rows
    return SourceInfo(
        format=VectorFormat.PARQUET,
        driver="pyarrow",
        layer=Path(path).stem,
        layers=[LayerInfo(name=Path(path).stem, feature_count=rows)],
        feature_count=rows,
        crs=geo.crs,
        geometry_type=geo.declared_type,
        columns=[name for name in parquet.schema_arrow.names if name not in geo.not_attributes],
    )


def _read_parquet(path: str | Path, batch_size: int, source: str) -> Iterator[RawBatch]:
    parquet = _parquet_file(path, source)
    geo = geoparquet_columns(parquet.schema_arrow, source)
    first_row = 1
    try:
        for batch in parquet.iter_batches(batch_size=batch_size):
            table = pa.Table.from_batches([batch])
            geometry = table.column(geo.geometry).combine_chunks()
            table = table.drop_columns([name for name in geo.not_attributes if name in table.column_names])
            rows = np.arange(first_row, first_row + table.num_rows)
            first_row += table.num_rows
            yield RawBatch(source, table, geometry, rows, geo.crs, geo.declared_type)
    except (pa.ArrowException, OSError) as exc:
        raise PermanentError(
            f"{source}: reading failed ({exc}); the file may be truncated or corrupt"
        ) from exc


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


def _check_csv_columns(converter: ConverterParams, columns: list[str], source: str) -> None:
    for param in ("wkt_column", "lat_name", "lon_name"):
        column = getattr(converter, param)
        if column is not None and column not in columns:
            holds = "the geometries as WKT" if param == "wkt_column" else "the coordinates"
            raise InvalidRequest(
                f"{source}: column {column!r} not found (columns: {', '.join(columns)}). "
                f"Set {param} to the column that holds {holds}"
            )
