"""PostGIS staging: COPY Arrow chunks (WKB geometries) into a staging table, exactly once per chunk.

postgis_publish.py then indexes the staging table and swaps it in. Every function commits its own
work and leaves an idle connection idle. Given a connection already inside a transaction, its
blocks become savepoints and the caller's commit decides.
"""

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from psycopg import Connection, errors, sql
from psycopg.rows import tuple_row
from pydantic import BaseModel, ConfigDict

from rayetl.errors import PermanentError
from rayetl.store.postgis_types import (
    COPY_HEADER,
    COPY_TRAILER,
    MAX_NAME_BYTES,
    Chunk,
    arrays_for_copy,
    as_arrow_chunk,
    binary_copy_rows,
    column_types,
)

__all__ = [
    "STAGING_PREFIX",
    "ChunkLoaded",
    "Table",
    "create_staging_table",
    "drop_staging",
    "list_staging_tables",
    "load_chunk",
    "staging_table_for",
    "table_exists",
]

logger = logging.getLogger(__name__)

STAGING_PREFIX = "_rayetl_stage_"


@dataclass(frozen=True)
class Table:
    """A schema-qualified table name."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        """The name quoted for SQL."""
        return sql.Identifier(self.schema, self.name)

    def sibling(self, suffix: str) -> sql.Identifier:
        """A relation named after this table in its schema: index, sequence, constraint."""
        return sql.Identifier(self.schema, relation_name(self.name, suffix))


class ChunkLoaded(BaseModel):
    """What load_chunk did with one chunk."""

    model_config = ConfigDict(frozen=True)

    staging: str
    chunk_key: str
    rows: int
    already_loaded: bool  # an earlier attempt committed this chunk; nothing was written now


def staging_table_for(target: Table, job_id: str) -> Table:
    """The staging table of a job's target: same schema, a deterministic name of at most 63 bytes."""
    return Table(target.schema, relation_name(f"{STAGING_PREFIX}{target.name}", job_id[:12]))


def table_exists(conn: Connection, schema: str, name: str) -> bool:
    """Whether a table, view or materialized view holds this name."""
    with conn.transaction():
        return relation_exists(conn, Table(schema, name))


def list_staging_tables(conn: Connection, schema: str) -> list[str]:
    """Names of the staging tables left in a schema."""
    with conn.transaction():
        rows = fetch_rows(
            conn,
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND starts_with(tablename, %s) ORDER BY 1",
            (schema, STAGING_PREFIX),
        )
    return [name for (name,) in rows]


def create_staging_table(conn: Connection, staging: Table, first_chunk: Chunk) -> dict[str, str]:
    """Create the staging table (and its schema) with the columns of a first chunk; returns them.

    The chunk is a pyarrow.Table whose `geom` column holds WKB in EPSG:4326 (a GeoDataFrame is
    converted to one). Attribute columns keep their Arrow types (lists and structs become jsonb);
    the geometry column's type is the one type every WKB header of the chunk names.
    A no-op when the table exists: a retried job keeps the chunks it already loaded.
    """
    columns = column_types(as_arrow_chunk(first_chunk, "the first chunk"))
    definitions = [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in columns.items()]
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(staging.schema)))
        # fid comes from the database: unique whatever the source (CSV, GeoJSON without ids,
        # several files appended), where a source fid may be missing or repeat. Its primary key
        # is added at publish: growing a B-tree row by row during the COPYs doubled their time.
        conn.execute(
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {table} (
                       fid bigint GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME {seq}),
                       {columns})"""
            ).format(
                table=staging.ident,
                seq=staging.sibling("fid_seq"),
                columns=sql.SQL(", ").join(definitions),
            )
        )
    return columns


def load_chunk(
    conn: Connection,
    staging: Table,
    chunk: Chunk,
    *,
    chunk_key: str,
    fids: pa.Array | pa.ChunkedArray | None = None,
    before_commit: Callable[[], None] | None = None,
) -> ChunkLoaded:
    """Binary-COPY one chunk into the staging table, exactly once per chunk key.

    The COPY rows are encoded from the chunk's Arrow columns and WKB bytes; no geometry is parsed.
    fids: the rows' fids (int64, unique in the table, e.g. their places in the source); without
    them the table's identity numbers the rows, a sequence call per row (~25% of a COPY's time).
    Every chunk of a table gives fids, or none does. before_commit runs after the COPY, inside its
    transaction (tests crash the worker there).
    """
    where = f"chunk {chunk_key!r}"
    table = as_arrow_chunk(chunk, where)
    with conn.transaction():
        columns = staging_columns(conn, staging)
        arrays = arrays_for_copy(table, columns, where)
        if fids is not None:
            columns, arrays = (
                {"fid": "bigint", **columns},
                [_fids_for_copy(fids, table.num_rows, where), *arrays],
            )
        # The key and the rows commit together: a worker killed mid-COPY leaves neither, and a
        # retry after the commit finds the key. A concurrent attempt at the same key waits on
        # the primary key here until the first commits (then it skips) or rolls back.
        claimed = fetch_rows(
            conn,
            """INSERT INTO rayetl.loaded_chunks (staging_table, chunk_key, rows, loaded_at)
               VALUES (%s, %s, %s, now()) ON CONFLICT DO NOTHING RETURNING rows""",
            (_bookkeeping_name(conn, staging), chunk_key, table.num_rows),
        )
        if not claimed:
            (rows,) = fetch_rows(
                conn,
                "SELECT rows FROM rayetl.loaded_chunks WHERE staging_table = %s AND chunk_key = %s",
                (_bookkeeping_name(conn, staging), chunk_key),
            )[0]
            logger.debug("chunk %s of %s was loaded before (%d rows): skipped", chunk_key, staging, rows)
            return ChunkLoaded(staging=str(staging), chunk_key=chunk_key, rows=rows, already_loaded=True)
        if table.num_rows:
            _copy(conn, staging, list(columns), arrays, chunk_key)
        if before_commit is not None:
            before_commit()
    logger.debug("chunk %s: %d rows copied into %s", chunk_key, table.num_rows, staging)
    return ChunkLoaded(staging=str(staging), chunk_key=chunk_key, rows=table.num_rows, already_loaded=False)


def drop_staging(conn: Connection, staging: Table) -> None:
    """Drop a staging table and forget its loaded chunks; a no-op when it is gone."""
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging.ident))
        forget_chunks(conn, staging)


# -- statements --------------------------------------------------------------------------------


def _copy(conn: Connection, staging: Table, names: list[str], arrays: list[pa.Array], chunk_key: str) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        staging.ident, sql.SQL(", ").join(map(sql.Identifier, names))
    )
    try:
        with conn.cursor().copy(statement) as copy:
            copy.write(COPY_HEADER)
            for batch in binary_copy_rows(arrays):
                copy.write(batch)
            copy.write(COPY_TRAILER)
    except errors.DataError as exc:  # a value PostgreSQL refuses: retrying cannot help
        raise PermanentError(f"chunk {chunk_key!r} into {staging}: {pg_message(exc)}") from exc


def _fids_for_copy(fids: pa.Array | pa.ChunkedArray, rows: int, where: str) -> pa.Array:
    fids = fids.combine_chunks() if isinstance(fids, pa.ChunkedArray) else fids
    if len(fids) != rows or fids.null_count or not pa.types.is_integer(fids.type):
        raise PermanentError(f"{where}: fids must be {rows} integers without nulls, one per row")
    return fids.cast(pa.int64())


def table_columns(conn: Connection, table: Table, *, identity: bool = False) -> dict[str, str]:
    """Column types (as format_type spells them) in table order, identity columns only if asked."""
    rows = fetch_rows(
        conn,
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity <> ''
           FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        (table.ident.as_string(conn),),
    )
    return {name: pg_type for name, pg_type, is_identity in rows if identity or not is_identity}


def staging_columns(conn: Connection, staging: Table) -> dict[str, str]:
    """The staging table's columns (fid left out); PermanentError when it does not exist."""
    columns = table_columns(conn, staging)
    if not columns:
        raise PermanentError(
            f"staging table {staging} does not exist: create it with create_staging_table first "
            "(publish_table and drop_staging remove it, so a finished job cannot load or publish again)"
        )
    return columns


# -- helpers (postgis_publish uses them too) --------------------------------------------------


def fetch_rows(conn: Connection, query: Any, params: Sequence[Any] = ()) -> list[tuple]:
    """Rows as tuples, whatever the row factory of the caller's connection."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(query, params).fetchall()


def relation_exists(conn: Connection, table: Table) -> bool:
    """Whether a table, view or materialized view holds the name."""
    return bool(
        fetch_rows(
            conn,
            """SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""",
            (table.schema, table.name),
        )
    )


def forget_chunks(conn: Connection, staging: Table) -> None:
    """Drop the record of a staging table's loaded chunks (it was published or dropped)."""
    conn.execute(
        "DELETE FROM rayetl.loaded_chunks WHERE staging_table = %s", (_bookkeeping_name(conn, staging),)
    )


def _bookkeeping_name(conn: Connection, staging: Table) -> str:
    # The quoted form ("a.b"."c" vs "a"."b.c") cannot confuse two tables.
    return staging.ident.as_string(conn)


def relation_name(base: str, suffix: str) -> str:
    """`<base>_<suffix>` in at most 63 bytes; a hash of the full name keeps shortened names apart."""
    name = f"{base}_{suffix}"
    encoded = name.encode()
    if len(encoded) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    # Cut on a character boundary: a split UTF-8 sequence is not a valid name.
    head = encoded[: MAX_NAME_BYTES - len(digest) - 1].decode("utf-8", errors="ignore")
    return f"{head}_{digest}"


def pg_message(exc: Exception) -> str:
    """PostgreSQL's message for an error, with its context (which row, which column) when it has one."""
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag and diag.message_primary else str(exc)
    return f"{primary} ({diag.context.strip()})" if diag and diag.context else primary
