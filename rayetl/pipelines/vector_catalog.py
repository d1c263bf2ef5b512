"""The STAC item of a published table (table extension), written to pgstac; shared by two jobs."""

import datetime as dt
from typing import Any

import pystac
from psycopg import sql
from pydantic import BaseModel

from rayetl.feature_links import features_url, viewer_url
from rayetl.settings import Settings
from rayetl.store import pgstac
from rayetl.store.db import connect
from rayetl.store.postgis import Table
from rayetl.store.postgis_publish import TablePublished, describe_table

__all__ = ["CatalogedTable", "TableSource", "catalog_table"]

TABLE_EXTENSION = "https://stac-extensions.github.io/table/v1.2.0/schema.json"
_WORLD = [-180.0, -90.0, 180.0, 90.0]


class TableSource(BaseModel):
    """Where a table's rows came from, for the item's properties."""

    container: str | None = None
    blob_name: str | None = None
    format: str | None = None
    job_id: str | None = None


class CatalogedTable(BaseModel):
    """The item written: its id and collection, and the URLs where the table answers."""

    item_id: str
    collection_id: str
    features_url: str
    viewer_url: str
    datetime_range: list[str | None]


def catalog_table(
    settings: Settings,
    table: Table,
    collection_id: str,
    *,
    temporal_column: str | None = None,
    source: TableSource | None = None,
    published: TablePublished | None = None,
) -> CatalogedTable:
    """Create or replace the table's item (id `schema.table`) in collection_id, created if missing.

    `published`: the table's description made when it was published (its rows and extent cost a
    full scan to find again), else the table is described here.
    """
    with connect(settings) as conn:
        published = published or describe_table(conn, table)
        times = _time_range(conn, table, temporal_column) if temporal_column else (None, None)
        item = _item(settings, table, published, times, collection_id, source or TableSource())
        with conn.transaction():
            pgstac.ensure_collection(conn, _collection(collection_id))
            pgstac.upsert_item(conn, item)
        pgstac.update_collection_extent(conn, collection_id)
    return CatalogedTable(
        item_id=item.id,
        collection_id=collection_id,
        features_url=features_url(settings, table.schema, table.name),
        viewer_url=viewer_url(settings, table.schema, table.name),
        datetime_range=[_iso(times[0]), _iso(times[1])],
    )


def _time_range(conn, table: Table, column: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    query = sql.SQL("SELECT min({c})::timestamptz AS start, max({c})::timestamptz AS end FROM {t}").format(
        c=sql.Identifier(column), t=table.ident
    )
    with conn.transaction():
        row = conn.execute(query).fetchone()
    return row["start"], row["end"]


def _item(
    settings: Settings,
    table: Table,
    published: TablePublished,
    times: tuple[dt.datetime | None, dt.datetime | None],
    collection_id: str,
    source: TableSource,
) -> pystac.Item:
    bbox = published.bbox or _WORLD
    start, end = times
    single = start if start is not None and start == end else None
    now = dt.datetime.now(dt.UTC)
    item = pystac.Item(
        id=f"{table.schema}.{table.name}",
        geometry=_box(bbox),
        bbox=bbox,
        datetime=single if single else (None if start else now),
        start_datetime=None if single or start is None else start,
        end_datetime=None if single or end is None else end,
        properties={
            "title": f"{table.schema}.{table.name}",
            "table:row_count": published.rows,
            "table:primary_geometry": "geom",
            "table:columns": [{"name": n, "type": t} for n, t in published.columns.items()],
            "rayetl:geometry_type": published.geometry_type,
            "rayetl:source": source.model_dump(exclude_none=True),
            "updated": now.isoformat(),
        },
        collection=collection_id,
        stac_extensions=[TABLE_EXTENSION],
    )
    item.add_asset(
        "features",
        pystac.Asset(
            href=features_url(settings, table.schema, table.name),
            media_type="application/geo+json",
            title="OGC API Features items",
            roles=["data"],
        ),
    )
    item.add_link(
        pystac.Link("alternate", viewer_url(settings, table.schema, table.name), "text/html", "Map viewer")
    )
    return item


def _collection(collection_id: str) -> dict[str, Any]:
    return pystac.Collection(
        id=collection_id,
        description=f"Vector tables loaded by rayetl ({collection_id})",
        extent=pystac.Extent(pystac.SpatialExtent([_WORLD]), pystac.TemporalExtent([[None, None]])),
        license="other",
    ).to_dict(include_self_link=False)


def _box(bbox: list[float]) -> dict[str, Any]:
    xmin, ymin, xmax, ymax = bbox
    ring = [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]
    return {"type": "Polygon", "coordinates": [ring]}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None
