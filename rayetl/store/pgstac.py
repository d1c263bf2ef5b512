"""pgstac writer: collections and items through pgstac's own SQL functions, one writer per collection."""

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pystac
import shapely.errors
import shapely.geometry
from psycopg import Connection, Cursor, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from pystac.utils import str_to_datetime

from rayetl.errors import InvalidRequest, NotFound, PermanentError, TransientError
from rayetl.settings import Settings
from rayetl.store.db import database_url

__all__ = [
    "Target",
    "default_collection",
    "delete_item",
    "ensure_collection",
    "get_collection",
    "get_item",
    "search_items",
    "update_collection_extent",
    "upsert_item",
    "upsert_items",
]

logger = logging.getLogger(__name__)

Target = Connection | Settings | str
"""A connection to use as it is, or Settings / a DSN to open (and commit) one for the call."""

# First half of the two-int advisory lock key; the second is hashtext(collection id). The two-int
# form is a separate key space from the bigint locks (migrate.py), so they cannot collide.
_LOCK_NAMESPACE = 720_421_102
# Rows per pgstac.upsert_items call: one jsonb array each, all inside the caller's transaction.
_CHUNK_SIZE = 500
# pgstac's errors about the content it was given: bad values (22xxx), RAISE EXCEPTION from its
# plpgsql (e.g. start_datetime after end_datetime), a missing geometry. Connection and lock errors
# stay as they are, so the retry policy (actors/retry.py) still sees them as transient.
_DATA_ERRORS = (psycopg.errors.DataError, psycopg.errors.RaiseException, psycopg.errors.NotNullViolation)


@contextmanager
def _connection(target: Target) -> Iterator[Connection]:
    if isinstance(target, Connection):
        yield target
        return
    dsn = database_url(target) if isinstance(target, Settings) else target
    # Closing through the context manager commits, or rolls back when the block raised.
    with Connection.connect(dsn) as conn:
        yield conn


@contextmanager
def _pgstac(target: Target, *lock_ids: str) -> Iterator[Cursor]:
    """A cursor in a transaction that sees pgstac first and holds the named collections' locks."""
    with _connection(target) as conn:
        # Inside the caller's transaction, conn.transaction() is only a savepoint, and a SET LOCAL
        # released with it would last until the caller's commit; so it is put back below.
        nested = conn.info.transaction_status != TransactionStatus.IDLE
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            previous = cur.execute("SELECT current_setting('search_path')").fetchone()[0] if nested else None
            # Per transaction, not per connection: connections come from a pool shared with the
            # audit store, and a session-level SET would follow the connection to its next borrower.
            # Several pgstac functions (search, delete_item, collection_extent, the staging trigger)
            # carry no SET search_path of their own and resolve names through the caller's.
            cur.execute("SET LOCAL search_path TO pgstac, public")
            _lock_collections(cur, lock_ids)
            yield cur
            # Not reached when the block raised: the savepoint's rollback undoes the SET LOCAL.
            if previous is not None:
                cur.execute("SELECT set_config('search_path', %s, true)", (previous,))


def _lock_collections(cur: Cursor, collection_ids: Iterable[str]) -> None:
    # Parallel loaders into one pgstac partition are known to lose items, and the partition upkeep
    # in pgstac's staging trigger (check_partition widening the partition's datetime CHECK) races:
    # without this lock, 7 of 8 concurrent writers into a new collection failed on that CHECK.
    # Sorted, so writers that lock several collections take them in one order and cannot deadlock.
    for collection_id in sorted(set(collection_ids)):
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_NAMESPACE, collection_id))


def default_collection(
    collection_id: str, description: str, *, license: str = "proprietary", title: str | None = None
) -> pystac.Collection:
    """A valid collection with a whole-world, open-ended extent, for update_collection_extent to narrow."""
    extent = pystac.Extent(
        pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
        pystac.TemporalExtent([[None, None]]),
    )
    return pystac.Collection(collection_id, description, extent, title=title, license=license)


def _collection_dict(collection: pystac.Collection | dict[str, Any]) -> dict[str, Any]:
    if isinstance(collection, pystac.Collection):
        return collection.to_dict(include_self_link=False, transform_hrefs=False)
    content = dict(collection)
    collection_id = content.get("id")
    if not isinstance(collection_id, str) or not collection_id:
        raise PermanentError(f"STAC collection has no id (keys: {', '.join(sorted(content))}); set 'id'")
    extent = content.get("extent")
    spatial = extent.get("spatial", {}).get("bbox") if isinstance(extent, dict) else None
    temporal = extent.get("temporal", {}).get("interval") if isinstance(extent, dict) else None
    if not (_is_list_of_lists(spatial) and _is_list_of_lists(temporal)):
        raise PermanentError(
            f"STAC collection {collection_id!r}: extent must hold spatial.bbox and temporal.interval as "
            f"lists of lists (got {extent!r}); default_collection() builds a valid one"
        )
    content.setdefault("type", "Collection")
    return content


def _is_list_of_lists(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, list) for v in value)


def ensure_collection(
    target: Target, collection: pystac.Collection | dict[str, Any], *, replace: bool = False
) -> bool:
    """Create the collection if it is missing; True if it was created (or replaced).

    An existing collection is left as it is, so a re-run does not reset the extent or description
    that update_collection_extent or a person wrote; replace=True overwrites it with `collection`.
    """
    content = _collection_dict(collection)
    collection_id = content["id"]
    # Locked, so two loaders ensuring one new collection do not both try to insert it.
    with _pgstac(target, collection_id) as cur:
        exists = cur.execute("SELECT 1 FROM pgstac.collections WHERE id = %s", (collection_id,)).fetchone()
        if exists and not replace:
            return False
        # create_collection, not upsert, when not replacing: should a writer that skips the lock
        # create it meanwhile, this fails (and a retry returns False) instead of overwriting it.
        function = "upsert_collection" if exists else "create_collection"
        try:
            cur.execute(sql.SQL("SELECT pgstac.{}(%s)").format(sql.Identifier(function)), (Jsonb(content),))
        except _DATA_ERRORS as exc:
            raise PermanentError(f"pgstac rejected STAC collection {collection_id!r}: {exc}") from exc
    logger.info("pgstac collection %s %s", collection_id, "replaced" if exists else "created")
    return True


def get_collection(target: Target, collection_id: str) -> dict[str, Any] | None:
    """The collection as pgstac stores it, or None."""
    with _pgstac(target) as cur:
        return cur.execute("SELECT pgstac.get_collection(%s)", (collection_id,)).fetchone()[0]


def _item_dict(item: pystac.Item | dict[str, Any]) -> dict[str, Any]:
    """The item as JSON, checked for what pgstac needs to place it; errors name the item."""
    if isinstance(item, pystac.Item):
        content = item.to_dict(include_self_link=False, transform_hrefs=False)
    else:
        content = dict(item)
    item_id = content.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise PermanentError(f"STAC item has no id (keys: {', '.join(sorted(content))}); set 'id'")
    problems = []
    if not isinstance(content.get("collection"), str) or not content["collection"]:
        problems.append("no 'collection' (set Item.collection_id, or the 'collection' key)")
    problems.extend(_geometry_problems(content))
    properties = content.get("properties")
    if not isinstance(properties, dict):
        problems.append("no 'properties' object")
    else:
        problems.extend(_datetime_problems(properties))
    if problems:
        raise PermanentError(f"STAC item {item_id!r} cannot be stored in pgstac: {'; '.join(problems)}")
    content.setdefault("type", "Feature")
    return content


def _geometry_problems(content: dict[str, Any]) -> list[str]:
    geometry, bbox = content.get("geometry"), content.get("bbox")
    problems = []
    if geometry is None and bbox is None:
        return ["neither a geometry nor a bbox"]
    if geometry is not None:
        # Checked here because PostGIS reports a bad GeoJSON geometry as an internal error (XX000)
        # that names no item, and that class of error is not only about the data.
        try:
            shapely.geometry.shape(geometry)
        except (ValueError, TypeError, KeyError, AttributeError, shapely.errors.ShapelyError) as exc:
            problems.append(f"geometry is not valid GeoJSON ({type(exc).__name__}: {exc})")
    if bbox is not None and not (
        isinstance(bbox, list) and len(bbox) in (4, 6) and all(isinstance(v, int | float) for v in bbox)
    ):
        problems.append(f"bbox {bbox!r} is not 4 or 6 numbers")
    return problems


def _datetime_problems(properties: dict[str, Any]) -> list[str]:
    if properties.get("start_datetime") and properties.get("end_datetime"):
        names = ("start_datetime", "end_datetime")
    elif properties.get("datetime"):
        names = ("datetime",)
    else:
        return ["properties need 'datetime', or both 'start_datetime' and 'end_datetime'"]
    problems = []
    for name in names:
        try:
            str_to_datetime(str(properties[name]))
        except ValueError:
            problems.append(f"properties.{name} {properties[name]!r} is not an RFC 3339 date-time")
    return problems


def upsert_item(target: Target, item: pystac.Item | dict[str, Any]) -> None:
    """Insert the item, or replace the one with its id; its collection must exist (ensure_collection)."""
    upsert_items(target, [item])


def upsert_items(target: Target, items: Iterable[pystac.Item | dict[str, Any]]) -> int:
    """Insert or replace items in one transaction; returns how many distinct items were written.

    Writers of the same collection are serialised by a transaction-scoped advisory lock, held until
    the transaction ends: when `target` is a connection inside the caller's own transaction, that
    is the caller's commit. Every collection must already exist (ensure_collection creates it).
    Within one call, a later item with the same collection and id replaces the earlier one.
    """
    by_key = {}
    for item in items:
        content = _item_dict(item)
        by_key[(content["collection"], content["id"])] = content
    if not by_key:
        return 0
    by_collection: dict[str, list[dict[str, Any]]] = {}
    for (collection_id, _), content in by_key.items():
        by_collection.setdefault(collection_id, []).append(content)
    with _pgstac(target, *by_collection) as cur:
        _check_collections_exist(cur, by_collection)
        for collection_id, contents in sorted(by_collection.items()):
            for start in range(0, len(contents), _CHUNK_SIZE):
                chunk = contents[start : start + _CHUNK_SIZE]
                try:
                    cur.execute("SELECT pgstac.upsert_items(%s)", (Jsonb(chunk),))
                except _DATA_ERRORS as exc:
                    raise PermanentError(_rejected_message(collection_id, chunk, exc)) from exc
                except psycopg.errors.CheckViolation as exc:
                    # The only CHECKs on items are the partitions' datetime ranges, which pgstac
                    # widens before it inserts; a violation means a writer that does not take the
                    # collection lock (another loader) moved them meanwhile. Seen without the lock.
                    raise TransientError(
                        f"pgstac collection {collection_id!r}: another writer changed a partition's "
                        f"datetime range during this upsert ({exc}); retry the upsert"
                    ) from exc
    logger.debug("pgstac upserted %d items into %s", len(by_key), ", ".join(sorted(by_collection)))
    return len(by_key)


def _check_collections_exist(cur: Cursor, wanted: Iterable[str]) -> None:
    wanted = sorted(wanted)
    rows = cur.execute("SELECT id FROM pgstac.collections WHERE id = ANY(%s)", (wanted,)).fetchall()
    missing = sorted(set(wanted) - {row[0] for row in rows})
    if missing:
        raise NotFound(
            f"pgstac collection(s) {', '.join(map(repr, missing))} do not exist; "
            "create them with ensure_collection() before writing items"
        )


def _rejected_message(collection_id: str, chunk: list[dict[str, Any]], exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0]
    if len(chunk) == 1:
        return f"pgstac rejected STAC item {chunk[0]['id']!r} in collection {collection_id!r}: {reason}"
    ids = ", ".join(repr(c["id"]) for c in chunk[:5]) + (", …" if len(chunk) > 5 else "")
    return (
        f"pgstac rejected a batch of {len(chunk)} STAC items in collection {collection_id!r} "
        f"({ids}): {reason}. Upsert them one at a time to find the offending item"
    )


def delete_item(target: Target, collection_id: str, item_id: str) -> bool:
    """Delete one item; False if there was none."""
    try:
        with _pgstac(target, collection_id) as cur:
            cur.execute("SELECT pgstac.delete_item(%s, %s)", (item_id, collection_id))
    except psycopg.errors.NoDataFound:
        # pgstac's delete_item uses DELETE ... INTO STRICT, which raises when nothing matched;
        # the transaction block above has already rolled back, so there is nothing to undo.
        return False
    return True


def get_item(target: Target, collection_id: str, item_id: str) -> dict[str, Any] | None:
    """The item as pgstac returns it (hydrated with its collection's item_assets), or None."""
    with _pgstac(target) as cur:
        return cur.execute("SELECT pgstac.get_item(%s, %s)", (item_id, collection_id)).fetchone()[0]


def search_items(
    target: Target,
    collection_id: str,
    *,
    ids: Iterable[str] | None = None,
    bbox: tuple[float, ...] | list[float] | None = None,
    datetime_range: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Items of one collection through pgstac's search(), newest first, at most `limit`.

    datetime_range is a STAC datetime parameter: an instant, or "start/end" with ".." for open ends.
    """
    if limit < 1:
        raise InvalidRequest(f"search limit must be at least 1, got {limit}")
    body: dict[str, Any] = {"collections": [collection_id], "limit": limit}
    if ids is not None:
        body["ids"] = list(ids)
        if not body["ids"]:
            return []
    if bbox is not None:
        if len(bbox) not in (4, 6):
            raise InvalidRequest(
                f"bbox {list(bbox)!r} must have 4 numbers (west, south, east, north) or 6 (with heights)"
            )
        body["bbox"] = [float(v) for v in bbox]
    if datetime_range is not None:
        body["datetime"] = datetime_range
    with _pgstac(target) as cur:
        page = cur.execute("SELECT pgstac.search(%s)", (Jsonb(body),)).fetchone()[0]
    return page.get("features") or []


def update_collection_extent(target: Target, collection_id: str) -> dict[str, Any] | None:
    """Set the collection's extent to what its items cover; returns it (None: no items, unchanged).

    The extent comes from pgstac's collection_extent(id, runupdate => true), which refreshes the
    partition statistics first, so it covers items written a moment ago.
    """
    with _pgstac(target, collection_id) as cur:
        if not cur.execute("SELECT 1 FROM pgstac.collections WHERE id = %s", (collection_id,)).fetchone():
            raise NotFound(
                f"pgstac collection {collection_id!r} does not exist; create it with ensure_collection()"
            )
        extent = cur.execute("SELECT pgstac.collection_extent(%s, true)", (collection_id,)).fetchone()[0]
        if extent is None:
            return None
        extent["temporal"]["interval"] = [
            [_utc(start), _utc(end)] for start, end in extent["temporal"]["interval"]
        ]
        # Read first and written in a second statement: pgstac's update_collection_extents() does it
        # inside its own UPDATE, which re-enters collections when the auto-extent setting is on.
        cur.execute(
            "UPDATE pgstac.collections SET content = jsonb_set(content, '{extent}', %s) WHERE id = %s",
            (Jsonb(extent), collection_id),
        )
    logger.info("pgstac collection %s extent set to %s", collection_id, extent)
    return extent


def _utc(timestamp: str | None) -> str | None:
    # collection_extent formats timestamps in the session's time zone; STAC wants UTC.
    if timestamp is None:
        return None
    return datetime.fromisoformat(timestamp).astimezone(UTC).isoformat().replace("+00:00", "Z")
