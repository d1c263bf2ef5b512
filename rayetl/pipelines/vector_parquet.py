"""GeoParquet sources, read by pyarrow: pyogrio's GDAL wheels have no Parquet driver."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayetl.errors import InvalidRequest, PermanentError
from rayetl.pipelines.vector_columns import geoparquet_columns
from rayetl.pipelines.vector_formats import LayerInfo, RawBatch, SourceInfo, VectorFormat

__all__ = ["parquet_file", "parquet_info", "read_parquet"]


def parquet_file(path: str | Path, source: str) -> pq.ParquetFile:
    """The Parquet file's reader; InvalidRequest when it is not one."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidRequest(
            f"{source}: not a readable Parquet file ({exc}); re-export or re-upload it"
        ) from exc


def parquet_info(path: str | Path, source: str) -> SourceInfo:
    """What the file holds, from its metadata alone: rows, CRS, geometry type, columns."""
    parquet = parquet_file(path, source)
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


def read_parquet(path: str | Path, batch_size: int, source: str) -> Iterator[RawBatch]:
    """The rows, a row batch at a time, with the primary geometry column as WKB."""
    parquet = parquet_file(path, source)
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
