"""ingest_vector: a vector file into a clean, indexed PostGIS table in EPSG:4326, a STAC item, and a URL.

prepare (streams) → upload → publish → catalog. The prepare task reads the file in batches and
yields each prepared chunk (Arrow, geometry as WKB) through Ray's object store; an upload task per
chunk COPYs it into the job's staging table exactly once while the file is still being read.
publish indexes the staging table and swaps it in atomically; a failed or cancelled job drops it.
"""

import functools
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from rayetl.errors import PermanentError
from rayetl.pipelines.contract import JobType, Stage, StageOutputs, StreamItem, TaskSpec, current_task
from rayetl.pipelines.ingest_vector_params import (
    IngestVectorParams,
    check_target,
    inspect_source,
    preflight,
    source_file,
)
from rayetl.pipelines.vector_catalog import CatalogedTable, TableSource, catalog_table
from rayetl.pipelines.vector_prepare import prepare_batch
from rayetl.pipelines.vector_source import read_batches
from rayetl.pipelines.vector_summary import ChunkSummary, RejectedRow, merge_summaries, nothing_loaded_message
from rayetl.settings import Settings
from rayetl.store import postgis, postgis_publish
from rayetl.store.db import connect

__all__ = ["INGEST_VECTOR", "IngestVectorParams", "IngestVectorResult"]

_MIN_CHUNK, _MAX_CHUNK = 20_000, 250_000
_TARGET_CHUNKS = 8  # enough chunks to overlap reading with COPY, few enough to keep overhead low
_FID = "fid"


class IngestVectorResult(BaseModel):
    """What a finished ingest_vector reports."""

    table: str
    rows_read: int
    rows_loaded: int
    rows_dropped_null: int
    rows_dropped_empty: int
    geometries_repaired: int
    rows_rejected: int
    rejected_rows: list[RejectedRow]
    chunks_total: int
    chunks_loaded: int
    renamed_columns: dict[str, str]
    geometry_type: str
    bbox: list[float] | None
    columns: dict[str, str]
    indexes: list[str]
    stac_item_id: str
    stac_collection: str
    data_complete: bool
    timings_s: dict[str, float | None]
    ogc_features_url: str
    viewer_url: str


# -- prepare --------------------------------------------------------------------------------------


def prepare_chunks(params: IngestVectorParams) -> Iterator[StreamItem]:
    """Read the source in batches and yield each as a load-ready chunk; creates the staging table."""
    ctx = current_task()
    settings = ctx.settings
    check_target(params, settings)  # the world may have changed since submission
    staging = postgis.staging_table_for(params.target, ctx.job_id)
    with source_file(params, settings) as path:
        info = inspect_source(path, params, settings)
        chunk_size = params.chunk_size or _auto_chunk_size(info.feature_count)
        batches = read_batches(
            path,
            params.format,
            params.converter_params,
            batch_size=chunk_size,
            source_name=params.blob_name,
        )
        summaries, target_type, staged = [], None, False
        for index, batch in enumerate(batches):
            chunk = prepare_batch(
                batch,
                target_type=target_type,
                source_crs=params.source_crs,
                geometry_params=params.geometry_params,
                on_invalid=params.converter_params.on_invalid,
            )
            summaries.append(chunk.summary)
            target_type = target_type or chunk.summary.geometry_type
            if chunk.table.num_rows and not staged:
                with connect(settings) as conn:
                    postgis.create_staging_table(conn, staging, chunk.table)
                staged = True
            rows = chunk.table.add_column(0, _FID, chunk.fids)  # one Arrow table through the object store
            yield StreamItem(f"chunk-{index:06d}", rows, chunk.summary.model_dump(mode="json"))
            _maybe_crash(params, "crash_prepare_after_first_chunk")
    total = merge_summaries(summaries)
    if total.rows_out == 0:
        raise PermanentError(nothing_loaded_message(params.blob_name, total))


def _auto_chunk_size(feature_count: int | None) -> int:
    if not feature_count:
        return 50_000
    return max(_MIN_CHUNK, min(_MAX_CHUNK, -(-feature_count // _TARGET_CHUNKS)))


def plan_prepare(params: IngestVectorParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task reads the whole file, as a stream of chunks."""
    return [TaskSpec(key="read", args=(params,))]


# -- upload ---------------------------------------------------------------------------------------


def upload_chunk(chunk: pa.Table, chunk_key: str, params: IngestVectorParams) -> dict[str, Any]:
    """COPY one chunk into the staging table, exactly once (a retry finds its key and skips).

    The chunk's first column holds its rows' fids (their places in the source), the rest the rows.
    """
    ctx = current_task()
    if chunk.num_rows == 0:
        return {"chunk": chunk_key, "rows": 0, "already_loaded": False}
    staging = postgis.staging_table_for(params.target, ctx.job_id)
    before_commit = _crash if _fault_armed(params, "crash_upload_before_commit") else None
    fids, rows = chunk.column(_FID), chunk.drop_columns([_FID])
    with connect(ctx.settings) as conn:
        loaded = postgis.load_chunk(
            conn, staging, rows, chunk_key=chunk_key, fids=fids, before_commit=before_commit
        )
    _maybe_crash(params, "crash_upload_after_commit")
    return {"chunk": chunk_key, "rows": loaded.rows, "already_loaded": loaded.already_loaded}


def plan_upload(params: IngestVectorParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One upload per chunk that arrived (called again as more arrive)."""
    return [TaskSpec(key=key, args=(chunk, key, params)) for key, chunk in outputs["prepare"].items()]


# -- publish --------------------------------------------------------------------------------------


def publish(params: IngestVectorParams, loaded: dict[str, Any]) -> dict[str, Any]:
    """Index, analyze and swap the staging table in; returns the table and the load's counts."""
    ctx = current_task()
    staging = postgis.staging_table_for(params.target, ctx.job_id)
    with connect(ctx.settings) as conn:
        published = postgis_publish.publish_table(
            conn,
            staging,
            params.target,
            if_exists=params.if_exists,
            spatial_index=params.indexes.spatial,
            attribute_indexes=params.indexes.attributes,
            temporal_indexes=params.indexes.temporal,
            job_id=ctx.job_id,
            connect=functools.partial(connect, ctx.settings),
            extent=loaded["prepared"]["bbox"],  # of the rows as prepared: no scan to measure it
        )
    return {"table": published.model_dump(mode="json"), **loaded}


def plan_publish(params: IngestVectorParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task; the counts of prepare and upload travel with it, so a resumed job still has them."""
    prepared = merge_summaries(ChunkSummary(**s) for s in outputs["prepare"].summaries.values())
    uploads = outputs["upload"].summaries.values()
    loaded = {
        "prepared": prepared.model_dump(mode="json"),
        "chunks_total": len(outputs["prepare"]),
        "chunks_loaded": len(outputs["upload"]),
        "rows_copied": sum(u["rows"] for u in uploads),
        "timings_s": {name: outputs[name].elapsed_s for name in ("prepare", "upload")},
    }
    if prepared.rows_out == 0:
        raise PermanentError(nothing_loaded_message(params.blob_name, prepared))
    return [TaskSpec(key="publish", args=(params, loaded))]


# -- catalog --------------------------------------------------------------------------------------


def catalog(params: IngestVectorParams, published: dict[str, Any]) -> dict[str, Any]:
    """Create or replace the table's STAC item, from the description publish made of the table."""
    ctx = current_task()
    cataloged = catalog_table(
        ctx.settings,
        params.target,
        params.collection_id,
        temporal_column=params.indexes.temporal[0] if params.indexes.temporal else None,
        source=TableSource(
            container=params.container_name,
            blob_name=params.blob_name,
            format=params.format.value,
            job_id=ctx.job_id,
        ),
        published=postgis_publish.TablePublished(**published),
    )
    return cataloged.model_dump(mode="json")


def plan_catalog(params: IngestVectorParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task, with the published table's description."""
    (published,) = outputs["publish"].values()
    return [TaskSpec(key="catalog", args=(params, published["table"]))]


# -- the job --------------------------------------------------------------------------------------


def finalize(params: IngestVectorParams, outputs: Mapping[str, StageOutputs]) -> IngestVectorResult:
    """The load's counts, the published table and where it answers."""
    (published,) = outputs["publish"].values()
    (cataloged,) = outputs["catalog"].values()
    table, prepared = published["table"], ChunkSummary(**published["prepared"])
    cataloged = CatalogedTable(**cataloged)
    complete = published["chunks_loaded"] == published["chunks_total"] and (
        params.if_exists == "append" or table["rows"] == prepared.rows_out
    )
    if not complete:
        raise PermanentError(
            f"{params.target} holds {table['rows']} rows but {prepared.rows_out} were prepared "
            f"({published['chunks_loaded']}/{published['chunks_total']} chunks loaded)"
        )
    timings = {**published["timings_s"], **{n: outputs[n].elapsed_s for n in ("publish", "catalog")}}
    return IngestVectorResult(
        table=table["table"],
        rows_read=prepared.rows_in,
        rows_loaded=prepared.rows_out,
        rows_dropped_null=prepared.dropped_null,
        rows_dropped_empty=prepared.dropped_empty,
        geometries_repaired=prepared.repaired,
        rows_rejected=prepared.rejected,
        rejected_rows=prepared.rejected_rows,
        chunks_total=published["chunks_total"],
        chunks_loaded=published["chunks_loaded"],
        renamed_columns=prepared.renamed,
        geometry_type=table["geometry_type"],
        bbox=table["bbox"],
        columns=table["columns"],
        indexes=table["indexes"],
        stac_item_id=cataloged.item_id,
        stac_collection=cataloged.collection_id,
        data_complete=complete,
        timings_s=timings,
        ogc_features_url=cataloged.features_url,
        viewer_url=cataloged.viewer_url,
    )


def drop_staging(params: IngestVectorParams, job_id: str, settings: Settings) -> None:
    """A failed or cancelled job leaves no staging table: the target is untouched or complete."""
    with connect(settings) as conn:
        postgis.drop_staging(conn, postgis.staging_table_for(params.target, job_id))


def _fault_armed(params: IngestVectorParams, fault: str) -> bool:
    """Test only: whether to crash here (faults fire on the first attempt of the task and the job)."""
    ctx = current_task()
    return fault in params.inject_faults and ctx.attempt == 1 and ctx.job_attempt == 1


def _maybe_crash(params: IngestVectorParams, fault: str) -> None:
    if _fault_armed(params, fault):
        _crash()


def _crash() -> None:
    """Die like a killed worker: no exception, no cleanup, no acknowledgement."""
    time.sleep(0.2)  # let the log line about the crash reach the driver
    os._exit(1)


INGEST_VECTOR = JobType(
    name="ingest_vector",
    description=(
        "Loads a vector file (CSV, GeoJSON, GeoPackage, KML/KMZ, Shapefile, zip, FlatGeobuf, GeoParquet) "
        "into an indexed PostGIS table in EPSG:4326, catalogs it in STAC and serves it under /features."
    ),
    params=IngestVectorParams,
    stages=(
        Stage(
            "prepare",
            plan=plan_prepare,
            run=prepare_chunks,
            streams=True,
            description="read in batches; repair, reproject and promote each chunk",
        ),
        Stage("upload", plan=plan_upload, run=upload_chunk, num_cpus=0.5, description="COPY each chunk"),
        Stage(
            "publish",
            plan=plan_publish,
            run=publish,
            durable=True,
            num_cpus=0.5,
            description="index, analyze and swap in",
        ),
        Stage("catalog", plan=plan_catalog, run=catalog, durable=True, num_cpus=0, description="STAC item"),
    ),
    finalize=finalize,
    preflight=preflight,
    cleanup=drop_staging,
)
