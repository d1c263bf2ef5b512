"""OGC API Features and vector tiles (tipg) for the tables of the data schemas, under /features."""

import asyncio
import datetime
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from tipg.collections import Catalog, pg_get_collection_index
from tipg.database import close_db_connection, connect_to_db
from tipg.errors import DEFAULT_STATUS_CODES, TiPgError, add_exception_handlers
from tipg.extensions.viewer import viewerExtension
from tipg.factory import Endpoints
from tipg.settings import DatabaseSettings, PostgresSettings

from rayetl.feature_links import FEATURES_PREFIX, features_url, viewer_url
from rayetl.settings import Settings
from rayetl.store.db import database_url
from rayetl.store.postgis import STAGING_PREFIX

__all__ = ["FEATURES_PREFIX", "add_features", "features_url", "viewer_url"]

logger = logging.getLogger(__name__)


# The relations tipg may serve (same relkinds as its tipg_catalog), by oid and name: a created,
# dropped or renamed table changes it, and so does a swap, since the swapped-in table has a new oid.
_SIGNATURE_SQL = """
SELECT c.oid, n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'v', 'm', 'f', 'p')
ORDER BY c.oid
"""
_REFRESH_WITHIN_S = 5.0  # keep re-reading a catalog that tables changed under for this long


@dataclass
class _CatalogState:
    """The signature tipg's catalog was built from, and a lock so that one request rebuilds it."""

    db_settings: DatabaseSettings
    signature: list[tuple[int, str, str]] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _database_settings(settings: Settings) -> DatabaseSettings:
    # Tables only, and no timestamp extents: those are a full min/max scan of every table at every
    # refresh. `tables` is set at each refresh.
    return DatabaseSettings(schemas=settings.data_schemas, functions=[], datetime_extent=False)


async def _read_signature(conn: asyncpg.Connection, schemas: list[str]) -> list[tuple[int, str, str]]:
    return [tuple(row) for row in await conn.fetch(_SIGNATURE_SQL, schemas)]


def _served_tables(signature: list[tuple[int, str, str]]) -> list[str]:
    # Naming the tables keeps tipg off staging tables: a job loads them in the target's schema, and
    # reading one (tipg locks it to compute its extent) while the job swaps it in could deadlock.
    # An explicit list also serves nothing when no data schema is set (tipg would read `public`).
    return [f"{schema}.{name}" for _, schema, name in signature if not name.startswith(STAGING_PREFIX)]


async def _refresh_catalog(app: FastAPI) -> None:
    """Rebuild tipg's collection catalog, and remember the signature it was built from."""
    state: _CatalogState = app.state.features
    schemas = state.db_settings.schemas
    deadline = time.monotonic() + _REFRESH_WITHIN_S
    async with app.state.pool.acquire() as conn:
        for attempt in itertools.count(1):
            # The same signature before and after: no table came or went while tipg read them, so
            # the catalog matches it (a table swapped meanwhile would be missing from the catalog).
            before = await _read_signature(conn, schemas)
            db_settings = state.db_settings.model_copy(update={"tables": _served_tables(before)})
            last_try = time.monotonic() > deadline
            try:
                collections = await pg_get_collection_index(conn, settings=db_settings)
            except asyncpg.PostgresError:
                # tipg names tables by oid, so one dropped while it reads them fails its SQL: retry
                # then, but not an error that no table change explains.
                if last_try or await _read_signature(conn, schemas) == before:
                    raise
            else:
                consistent = await _read_signature(conn, schemas) == before
                if consistent or last_try:
                    break
            logger.info(
                "%s: tables changed while read; reading again (attempt %d)", FEATURES_PREFIX, attempt + 1
            )
    app.state.collection_catalog = Catalog(
        collections={c.id: c for c in collections}, last_updated=datetime.datetime.now()
    )
    # A catalog read while tables kept changing may lack one: let the next request read it again.
    state.signature = before if consistent else None
    logger.info("catalog of %s refreshed: %d collections", FEATURES_PREFIX, len(collections))


async def _refresh_if_changed(request: Request) -> None:
    """Before each /features request: rebuild the catalog when the set of tables changed."""
    app = request.app
    state: _CatalogState = app.state.features
    # One catalog query per request makes a new table visible at once, where tipg has a TTL.
    async with app.state.pool.acquire() as conn:
        signature = await _read_signature(conn, state.db_settings.schemas)
    if signature == state.signature:
        return
    async with state.lock:
        if signature != state.signature:  # else a concurrent request has just rebuilt it
            await _refresh_catalog(app)


def _features_router(settings: Settings) -> APIRouter:
    """tipg's OGC Features and Tiles routes, with the database pool opened in the app's lifespan."""
    db_settings = _database_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # tipg reads its asyncpg pool and catalog from app.state.pool and app.state.collection_catalog.
        await connect_to_db(
            app,
            schemas=db_settings.schemas,
            tipg_schema=db_settings.tipg_schema,
            settings=PostgresSettings(database_url=database_url(settings)),
        )
        try:
            app.state.features = _CatalogState(db_settings)
            await _refresh_catalog(app)
            yield
        finally:
            await close_db_connection(app)

    # router_prefix makes tipg's links carry /features (a mounted sub-app would lose it).
    endpoints = Endpoints(
        title="rayetl features", router_prefix=FEATURES_PREFIX, extensions=[viewerExtension()]
    )
    router = APIRouter(lifespan=lifespan, dependencies=[Depends(_refresh_if_changed)])
    router.include_router(endpoints.router)
    return router


def add_features(app: FastAPI, settings: Settings, *, dependencies: Sequence[Any] = ()) -> None:
    """Serve the tables of settings.data_schemas under /features; `dependencies` run first (e.g. a token)."""
    app.include_router(_features_router(settings), prefix=FEATURES_PREFIX, dependencies=list(dependencies))
    # Only tipg's own errors: its catch-all `Exception` handler would answer every 500 with the message.
    add_exception_handlers(
        app, {kind: code for kind, code in DEFAULT_STATUS_CODES.items() if issubclass(kind, TiPgError)}
    )
