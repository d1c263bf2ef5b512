"""unpublish_vector: reverse ingest_vector — drop the table and delete its STAC item."""

from collections.abc import Mapping
from typing import Any

from psycopg import sql
from pydantic import BaseModel, Field

from rayetl.errors import Conflict
from rayetl.pipelines.contract import JobType, Stage, StageOutputs, TaskSpec, current_task
from rayetl.pipelines.ingest_vector_params import TableParams, require_table
from rayetl.settings import Settings
from rayetl.store import pgstac
from rayetl.store.db import connect
from rayetl.store.postgis import table_exists
from rayetl.store.postgis_publish import forget_published, published_by

__all__ = ["UNPUBLISH_VECTOR", "UnpublishVectorParams", "UnpublishVectorResult"]


class UnpublishVectorParams(TableParams):
    """Parameters of unpublish_vector."""

    force: bool = Field(False, description="Drop the table even though rayetl did not create it.")


class UnpublishVectorResult(BaseModel):
    """What unpublish_vector removed, and the job that had published the table."""

    table: str
    table_dropped: bool
    stac_item_id: str
    stac_item_deleted: bool
    published_by_job: str | None
    published_by_link: str | None


def require_published(params: UnpublishVectorParams, settings: Settings) -> None:
    """The table must exist and, unless forced, have been published by rayetl (Conflict otherwise)."""
    require_table(params, settings)
    with connect(settings) as conn:
        _refuse_foreign(params, published_by(conn, params.target))


def _refuse_foreign(params: UnpublishVectorParams, publisher: str | None) -> None:
    if publisher is None and not params.force:
        raise Conflict(
            f"table {params.target} was not created by rayetl; submit again with force=true to drop it anyway"
        )


def unpublish(params: UnpublishVectorParams) -> dict[str, Any]:
    """Drop the table (and its publish record) in one transaction, then delete its STAC item."""
    ctx = current_task()
    table = params.target
    with connect(ctx.settings) as conn, conn.transaction():
        publisher = published_by(conn, table)
        dropped = table_exists(conn, table.schema, table.name)  # a retry may find it dropped already
        if dropped:
            _refuse_foreign(params, publisher)  # the world may have changed since submission
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table.ident))
        forget_published(conn, table)
    item_id = f"{table.schema}.{table.name}"
    deleted = pgstac.delete_item(ctx.settings, params.collection_id, item_id)
    return UnpublishVectorResult(
        table=str(table),
        table_dropped=dropped,
        stac_item_id=item_id,
        stac_item_deleted=deleted,
        published_by_job=publisher,
        published_by_link=f"/api/jobs/{publisher}" if publisher else None,
    ).model_dump(mode="json")


def plan_unpublish(params: UnpublishVectorParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task."""
    return [TaskSpec(key="unpublish", args=(params,))]


def finalize(params: UnpublishVectorParams, outputs: Mapping[str, StageOutputs]) -> UnpublishVectorResult:
    """What was removed."""
    (removed,) = outputs["unpublish"].values()
    return UnpublishVectorResult(**removed)


UNPUBLISH_VECTOR = JobType(
    name="unpublish_vector",
    description="Drops a table ingest_vector published and deletes its STAC item (force for other tables).",
    params=UnpublishVectorParams,
    stages=(Stage("unpublish", plan=plan_unpublish, run=unpublish, durable=True, num_cpus=0),),
    finalize=finalize,
    preflight=require_published,
)
