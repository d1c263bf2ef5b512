"""The record of raster outputs rayetl published: which files, which STAC item, which job."""

from psycopg import Connection
from psycopg.types.json import Jsonb
from pydantic import BaseModel

__all__ = ["PublishedRaster", "find_published", "forget_published", "record_published"]


class PublishedRaster(BaseModel):
    """One published output: the COG (or VRT mosaic) at `path` in `container`, and its files."""

    container: str
    path: str
    job_id: str
    files: list[str]
    collection_id: str
    item_id: str


def record_published(conn: Connection, published: PublishedRaster) -> None:
    """Record (or replace the record of) a published output."""
    conn.execute(
        """INSERT INTO rayetl.published_rasters (container, path, job_id, files, collection_id, item_id)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (container, path) DO UPDATE SET
             job_id = excluded.job_id, files = excluded.files, collection_id = excluded.collection_id,
             item_id = excluded.item_id, published_at = now()""",
        (
            published.container,
            published.path,
            published.job_id,
            Jsonb(published.files),
            published.collection_id,
            published.item_id,
        ),
    )


def find_published(conn: Connection, container: str, path: str) -> PublishedRaster | None:
    """The record of the output at `path`, or None when rayetl did not publish it."""
    row = conn.execute(
        """SELECT container, path, job_id, files, collection_id, item_id
           FROM rayetl.published_rasters WHERE container = %s AND path = %s""",
        (container, path),
    ).fetchone()
    if row is None:
        return None
    if not isinstance(row, dict):
        row = dict(
            zip(("container", "path", "job_id", "files", "collection_id", "item_id"), row, strict=True)
        )
    return PublishedRaster(**row)


def forget_published(conn: Connection, container: str, path: str) -> None:
    """Remove the record (the output was deleted)."""
    conn.execute("DELETE FROM rayetl.published_rasters WHERE container = %s AND path = %s", (container, path))
