"""PostGIS writer: COPY Arrow chunks (WKB geometries) into a staging table exactly once, then publish it.

Every function commits its own work and leaves an idle connection idle. Given a connection
already inside a transaction, its blocks become savepoints and the caller's commit decides.
"""

import functools
import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from psycopg import Connection, errors, sql
from psycopg.rows import tuple_row
from pydantic import BaseModel, ConfigDict

from rayetl.errors import Conflict, PermanentError
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
    "IfExists",
    "Table",
    "TablePublished",
    "create_staging_table",
    "describe_table",
    "drop_staging",
    "forget_published",
    "list_staging_tables",
    "load_chunk",
    "publish_table",
    "published_by",
    "staging_table_for",
    "table_exists",
]

logger = logging.getLogger(__name__)

IfExists = Literal["fail", "replace", "append"]
STAGING_PREFIX = "_rayetl_stage_"
_TEMPORAL = ("date", "timestamp without time zone", "timestamp with time zone")
# A publish waiting behind a long reader would queue every later reader behind it: give up
# instead (LockNotAvailable is an OperationalError, so the coordinator retries it later).
_SWAP_LOCK_TIMEOUT = "30s"
_Size = tuple[int, list[float] | None]  # rows, and [xmin, ymin, xmax, ymax] (None without geometries)


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
        return sql.Identifier(self.schema, _relation_name(self.name, suffix))


class ChunkLoaded(BaseModel):
    """What load_chunk did with one chunk."""

    model_config = ConfigDict(frozen=True)

    staging: str
    chunk_key: str
    rows: int
    already_loaded: bool  # an earlier attempt committed this chunk; nothing was written now


class TablePublished(BaseModel):
    """The published table: its size, extent, geometry type, columns and indexes."""

    model_config = ConfigDict(frozen=True)

    table: str
    rows: int
    bbox: list[float] | None  # [xmin, ymin, xmax, ymax] in EPSG:4326; None when no geometry
    geometry_type: str
    columns: dict[str, str]
    indexes: list[str]


def staging_table_for(target: Table, job_id: str) -> Table:
    """The staging table of a job's target: same schema, a deterministic name of at most 63 bytes."""
    return Table(target.schema, _relation_name(f"{STAGING_PREFIX}{target.name}", job_id[:12]))


def table_exists(conn: Connection, schema: str, name: str) -> bool:
    """Whether a table, view or materialized view holds this name."""
    with conn.transaction():
        return _exists(conn, Table(schema, name))


def list_staging_tables(conn: Connection, schema: str) -> list[str]:
    """Names of the staging tables left in a schema."""
    with conn.transaction():
        rows = _fetch(
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
        columns = _staging_columns(conn, staging)
        arrays = arrays_for_copy(table, columns, where)
        if fids is not None:
            columns, arrays = (
                {"fid": "bigint", **columns},
                [_fids_for_copy(fids, table.num_rows, where), *arrays],
            )
        # The key and the rows commit together: a worker killed mid-COPY leaves neither, and a
        # retry after the commit finds the key. A concurrent attempt at the same key waits on
        # the primary key here until the first commits (then it skips) or rolls back.
        claimed = _fetch(
            conn,
            """INSERT INTO rayetl.loaded_chunks (staging_table, chunk_key, rows, loaded_at)
               VALUES (%s, %s, %s, now()) ON CONFLICT DO NOTHING RETURNING rows""",
            (_bookkeeping_name(conn, staging), chunk_key, table.num_rows),
        )
        if not claimed:
            (rows,) = _fetch(
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


def publish_table(
    conn: Connection,
    staging: Table,
    target: Table,
    *,
    if_exists: IfExists = "fail",
    spatial_index: bool = True,
    attribute_indexes: Sequence[str] = (),
    temporal_indexes: Sequence[str] = (),
    job_id: str = "",
    connect: Callable[[], AbstractContextManager[Connection]] | None = None,
) -> TablePublished:
    """Index and analyze the staging table, then make it the target in one transaction.

    The publish is recorded in rayetl.published_tables (with job_id) in that same transaction, so
    the same job publishing again after a lost acknowledgement finds its work done. With `connect`
    (new connections to the same database), the primary key and the indexes build at once.
    """
    if if_exists not in ("fail", "replace", "append"):
        raise ValueError(f"if_exists must be 'fail', 'replace' or 'append', not {if_exists!r}")
    if staging.schema != target.schema:
        raise ValueError(f"staging table {staging} must be in the schema of its target {target}")
    with conn.transaction():
        done_before = job_id and not _exists(conn, staging) and published_by(conn, target) == job_id
    if done_before:
        logger.info("%s was published by job %s already; its staging table is gone", target, job_id[:12])
        return describe_table(conn, target)
    with conn.transaction():
        columns = _staging_columns(conn, staging)
        exists = _exists(conn, target)
    record = functools.partial(_record_publish, target=target, job_id=job_id, mode=if_exists)
    indexed = _indexed_columns(columns, spatial_index, attribute_indexes, temporal_indexes)
    if exists and if_exists == "fail":
        raise Conflict(_exists_message(target))  # before the index builds: they would be wasted
    size = None  # rows and extent of what is published, when measured already
    if exists and if_exists == "append":
        _append(conn, staging, target, columns, indexed, record)
    else:
        size = _build_keys_and_indexes(conn, staging, indexed, connect)
        with conn.transaction():
            _continue_fids(conn, staging)
            conn.execute(sql.SQL("ANALYZE {}").format(staging.ident))
        _swap(conn, staging, target, indexed, record, replace=if_exists == "replace")
    published = describe_table(conn, target, size=size)
    logger.info("published %s (%s): %d rows", target, if_exists, published.rows)
    return published


def drop_staging(conn: Connection, staging: Table) -> None:
    """Drop a staging table and forget its loaded chunks; a no-op when it is gone."""
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging.ident))
        _forget_chunks(conn, staging)


def describe_table(conn: Connection, table: Table, *, size: _Size | None = None) -> TablePublished:
    """Rows, extent, geometry type, columns and indexes of a published table.

    size: its rows and extent when they were measured already (a scan of the whole table).
    """
    with conn.transaction():
        columns = _table_columns(conn, table, identity=True)
        rows, bbox = size or _measure(conn, table)
        indexes = _fetch(
            conn,
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s ORDER BY 1",
            (table.schema, table.name),
        )
    kind = re.match(r"geometry\((\w+),", columns.get("geom", ""))
    return TablePublished(
        table=str(table),
        rows=rows,
        bbox=bbox,
        geometry_type=kind[1] if kind else "Geometry",
        columns=columns,
        indexes=[name for (name,) in indexes],
    )


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
        raise PermanentError(f"chunk {chunk_key!r} into {staging}: {_pg_message(exc)}") from exc


def _fids_for_copy(fids: pa.Array | pa.ChunkedArray, rows: int, where: str) -> pa.Array:
    fids = fids.combine_chunks() if isinstance(fids, pa.ChunkedArray) else fids
    if len(fids) != rows or fids.null_count or not pa.types.is_integer(fids.type):
        raise PermanentError(f"{where}: fids must be {rows} integers without nulls, one per row")
    return fids.cast(pa.int64())


def _table_columns(conn: Connection, table: Table, *, identity: bool = False) -> dict[str, str]:
    """Column types (as format_type spells them) in table order, identity columns only if asked."""
    rows = _fetch(
        conn,
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity <> ''
           FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        (table.ident.as_string(conn),),
    )
    return {name: pg_type for name, pg_type, is_identity in rows if identity or not is_identity}


def _staging_columns(conn: Connection, staging: Table) -> dict[str, str]:
    columns = _table_columns(conn, staging)
    if not columns:
        raise PermanentError(
            f"staging table {staging} does not exist: create it with create_staging_table first "
            "(publish_table and drop_staging remove it, so a finished job cannot load or publish again)"
        )
    return columns


def _indexed_columns(
    columns: dict[str, str], spatial: bool, attributes: Sequence[str], temporal: Sequence[str]
) -> list[tuple[str, str]]:
    """(column, index method) pairs to build, checked against the table's columns."""
    attribute_names = [n for n in columns if n != "geom"]
    for name in [*attributes, *temporal]:
        if name not in attribute_names:
            raise PermanentError(
                f"cannot index column {name!r}: no such column (columns: {', '.join(attribute_names)})"
            )
    for name in temporal:
        if columns[name] not in _TEMPORAL:
            raise PermanentError(
                f"temporal index on {name!r}: the column is {columns[name]}, not a date or timestamp; "
                "list it in attribute_indexes instead"
            )
    indexed = [("geom", "gist")] if spatial else []
    return indexed + [(name, "btree") for name in dict.fromkeys([*attributes, *temporal])]


def _build_keys_and_indexes(
    conn: Connection,
    table: Table,
    indexed: list[tuple[str, str]],
    connect: Callable[[], AbstractContextManager[Connection]] | None,
) -> _Size:
    """The primary key and the indexes of a loaded staging table, and its size; each on its own
    connection if it can.

    PostgreSQL builds one index per backend, single-threaded; builds on one table can run at once
    (they take SHARE locks), so a GIST build no longer waits for the primary key's. Counting the
    rows and their extent only reads, so it runs beside them too instead of after the swap.
    """
    jobs = [functools.partial(_index_primary_key, table=table)]
    jobs += [functools.partial(_create_indexes, table=table, indexed=[one]) for one in indexed]
    jobs += [functools.partial(_measure_in_transaction, table=table)]
    if connect is None:
        results = [job(conn) for job in jobs]
    else:

        def on_own_connection(job: Callable[[Connection], Any]) -> Any:
            with connect() as own:
                return job(own)

        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="index-build") as pool:
            # The first failure is raised; the other jobs have finished by then.
            results = [future.result() for future in [pool.submit(on_own_connection, job) for job in jobs]]
    _add_primary_key(conn, table)
    return results[-1]


def _measure(conn: Connection, table: Table) -> _Size:
    """Rows and extent of a table: one scan."""
    (rows, *bbox) = _fetch(
        conn,
        sql.SQL(
            """SELECT n, ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e)
               FROM (SELECT count(*) AS n, ST_Extent(geom) AS e FROM {}) s"""
        ).format(table.ident),
    )[0]
    return rows, None if bbox[0] is None else bbox


def _measure_in_transaction(conn: Connection, table: Table) -> _Size:
    with conn.transaction():
        return _measure(conn, table)


def _continue_fids(conn: Connection, table: Table) -> None:
    """Start the fid sequence after the largest fid: rows the loads numbered themselves (load_chunk's
    fids) would otherwise collide with the next rows the table numbers (an append, an INSERT)."""
    largest = sql.SQL("SELECT max(fid) AS fid FROM {}").format(table.ident)  # read off the fid index
    conn.execute(
        sql.SQL(
            "SELECT setval(pg_get_serial_sequence(%s, 'fid'), fid) FROM ({}) s WHERE fid IS NOT NULL"
        ).format(largest),
        (table.ident.as_string(conn),),
    )


def _index_primary_key(conn: Connection, table: Table) -> None:
    """The unique index on fid that becomes the primary key (a SHARE lock: builds beside the others)."""
    with conn.transaction():
        conn.execute(
            sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (fid)").format(
                sql.Identifier(_relation_name(table.name, "pkey")), table.ident
            )
        )


def _add_primary_key(conn: Connection, table: Table) -> None:
    """Make the fid index the primary key: only the catalog changes (a retry finds it done)."""
    name = _relation_name(table.name, "pkey")
    with conn.transaction():
        exists = _fetch(
            conn,
            "SELECT 1 FROM pg_constraint WHERE conname = %s AND conrelid = %s::regclass",
            (name, table.ident.as_string(conn)),
        )
        if not exists:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
                    table.ident, sql.Identifier(name), sql.Identifier(name)
                )
            )


def _create_indexes(conn: Connection, table: Table, indexed: list[tuple[str, str]]) -> None:
    # Built after the load: one sorted build is much faster than growing an index row by row.
    # IF NOT EXISTS with deterministic names makes a retried publish skip finished builds.
    for column, method in indexed:
        statement = sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING {} ({})").format(
            sql.Identifier(_relation_name(table.name, f"{column}_idx")),
            table.ident,
            sql.SQL(method),
            sql.Identifier(column),
        )
        try:
            with conn.transaction():
                conn.execute(statement)
        except errors.ProgramLimitExceeded as exc:
            raise PermanentError(
                f"cannot index column {column!r} of {table}: {_pg_message(exc)}; leave it out of the indexes"
            ) from exc


def published_by(conn: Connection, target: Table) -> str | None:
    """The id of the job that last published target, or None when rayetl did not publish it."""
    rows = _fetch(
        conn,
        "SELECT job_id FROM rayetl.published_tables WHERE schema_name = %s AND table_name = %s",
        (target.schema, target.name),
    )
    return rows[0][0] if rows else None


def forget_published(conn: Connection, target: Table) -> None:
    """Remove target from rayetl.published_tables (it was dropped)."""
    conn.execute(
        "DELETE FROM rayetl.published_tables WHERE schema_name = %s AND table_name = %s",
        (target.schema, target.name),
    )


def _record_publish(conn: Connection, *, target: Table, job_id: str, mode: str) -> None:
    conn.execute(
        """INSERT INTO rayetl.published_tables (schema_name, table_name, job_id, mode, published_at)
           VALUES (%s, %s, %s, %s, now())
           ON CONFLICT (schema_name, table_name)
           DO UPDATE SET job_id = excluded.job_id, mode = excluded.mode, published_at = now()""",
        (target.schema, target.name, job_id, mode),
    )


def _swap(
    conn: Connection,
    staging: Table,
    target: Table,
    indexed: list[tuple[str, str]],
    record: Callable[[Connection], None],
    *,
    replace: bool,
) -> None:
    """Rename staging to target (dropping an old target first) and its indexes after it."""
    renamed = ["pkey", *(f"{column}_idx" for column, _ in indexed)]
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_SWAP_LOCK_TIMEOUT)))
            # One transaction: readers block on the old table's lock, and when it commits their
            # queries look the name up again and find the new table, never an empty one.
            # Dropping first frees the old index names; no reader can tell it from rename-then-drop.
            if replace:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target.ident))
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(staging.ident, sql.Identifier(target.name))
            )
            for suffix in renamed:
                conn.execute(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        staging.sibling(suffix), sql.Identifier(_relation_name(target.name, suffix))
                    )
                )
            conn.execute(
                sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
                    staging.sibling("fid_seq"), sql.Identifier(_relation_name(target.name, "fid_seq"))
                )
            )
            _forget_chunks(conn, staging)
            record(conn)
    except errors.DuplicateTable as exc:  # created by someone else since the check above
        raise Conflict(_exists_message(target)) from exc
    except errors.DependentObjectsStillExist as exc:
        raise Conflict(
            f"cannot replace {target}: {_pg_message(exc)}; drop the dependent views first, or append"
        ) from exc


def _append(
    conn: Connection,
    staging: Table,
    target: Table,
    ours: dict[str, str],
    indexed: list[tuple[str, str]],
    record: Callable[[Connection], None],
) -> None:
    """Insert the staging rows into the existing target, then drop the staging table."""
    with conn.transaction():
        theirs = _table_columns(conn, target)
    if ours != theirs:
        differences = [
            f"{name} ({ours.get(name, 'absent')} in the data, {theirs.get(name, 'absent')} in the table)"
            for name in sorted(set(ours) | set(theirs))
            if ours.get(name) != theirs.get(name)
        ]
        raise Conflict(
            f"cannot append to {target}: columns differ: {'; '.join(differences)}. "
            "Use if_exists='replace', or load into a new table"
        )
    names = sql.SQL(", ").join(map(sql.Identifier, ours))
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_SWAP_LOCK_TIMEOUT)))
        # The target's own identity numbers the new rows, so their fids never collide.
        conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(target.ident, names, names, staging.ident)
        )
        _create_indexes(conn, target, indexed)
        conn.execute(sql.SQL("DROP TABLE {}").format(staging.ident))
        _forget_chunks(conn, staging)
        record(conn)
        conn.execute(sql.SQL("ANALYZE {}").format(target.ident))


# -- helpers -----------------------------------------------------------------------------------


def _fetch(conn: Connection, query: Any, params: Sequence[Any] = ()) -> list[tuple]:
    """Rows as tuples, whatever the row factory of the caller's connection."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(query, params).fetchall()


def _exists(conn: Connection, table: Table) -> bool:
    return bool(
        _fetch(
            conn,
            """SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""",
            (table.schema, table.name),
        )
    )


def _forget_chunks(conn: Connection, staging: Table) -> None:
    conn.execute(
        "DELETE FROM rayetl.loaded_chunks WHERE staging_table = %s", (_bookkeeping_name(conn, staging),)
    )


def _bookkeeping_name(conn: Connection, staging: Table) -> str:
    # The quoted form ("a.b"."c" vs "a"."b.c") cannot confuse two tables.
    return staging.ident.as_string(conn)


def _relation_name(base: str, suffix: str) -> str:
    """`<base>_<suffix>` in at most 63 bytes; a hash of the full name keeps shortened names apart."""
    name = f"{base}_{suffix}"
    encoded = name.encode()
    if len(encoded) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    # Cut on a character boundary: a split UTF-8 sequence is not a valid name.
    head = encoded[: MAX_NAME_BYTES - len(digest) - 1].decode("utf-8", errors="ignore")
    return f"{head}_{digest}"


def _exists_message(target: Table) -> str:
    return (
        f"table {target} already exists; use if_exists='replace' to overwrite it "
        "or if_exists='append' to add the rows to it"
    )


def _pg_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag and diag.message_primary else str(exc)
    return f"{primary} ({diag.context.strip()})" if diag and diag.context else primary
