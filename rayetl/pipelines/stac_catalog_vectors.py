"""stac_catalog_vectors: (re)create the STAC item of an existing PostGIS table, as ingest_vector does."""

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from rayetl.pipelines.contract import JobType, Stage, StageOutputs, TaskSpec, current_task
from rayetl.pipelines.ingest_vector_params import Identifier, TableParams, require_table
from rayetl.pipelines.vector_catalog import CatalogedTable, TableSource, catalog_table
from rayetl.store.db import connect
from rayetl.store.postgis_publish import published_by

__all__ = ["STAC_CATALOG_VECTORS", "StacCatalogVectorsParams"]


class StacCatalogVectorsParams(TableParams):
    """Parameters of stac_catalog_vectors."""

    temporal_column: Identifier | None = Field(
        None, description="Date/time column whose range becomes the item's start and end datetime."
    )


def catalog(params: StacCatalogVectorsParams) -> dict[str, Any]:
    """Write the table's item; the job that published the table, if rayetl did, is its source."""
    ctx = current_task()
    require_table(params, ctx.settings)  # it may have gone since submission
    with connect(ctx.settings) as conn:
        publisher = published_by(conn, params.target)
    cataloged = catalog_table(
        ctx.settings,
        params.target,
        params.collection_id,
        temporal_column=params.temporal_column,
        source=TableSource(job_id=publisher),
    )
    return cataloged.model_dump(mode="json")


def plan_catalog(params: StacCatalogVectorsParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task."""
    return [TaskSpec(key="catalog", args=(params,))]


def finalize(params: StacCatalogVectorsParams, outputs: Mapping[str, StageOutputs]) -> CatalogedTable:
    """The item written and the table's URLs."""
    (cataloged,) = outputs["catalog"].values()
    return CatalogedTable(**cataloged)


STAC_CATALOG_VECTORS = JobType(
    name="stac_catalog_vectors",
    description="Creates or replaces the STAC item of an existing PostGIS table (id schema.table).",
    params=StacCatalogVectorsParams,
    stages=(Stage("catalog", plan=plan_catalog, run=catalog, durable=True, num_cpus=0),),
    finalize=finalize,
    preflight=require_table,
)
