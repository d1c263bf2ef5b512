"""Connections to PostgreSQL: one pool per process, opened from the configured URL."""

import logging

from psycopg import Connection
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from rayetl.errors import RayetlError
from rayetl.settings import Settings

__all__ = ["connect", "database_url", "open_pool", "redact_url"]

logger = logging.getLogger(__name__)


def database_url(settings: Settings) -> str:
    """The database URL, or a message saying how to get one."""
    if settings.database_url is None:
        raise RayetlError(
            "no database configured: set RAYETL_DATABASE_URL, or run `rayetl up` "
            "(or `rayetl dev-db start`) to use a private local PostGIS"
        )
    return settings.database_url.get_secret_value()


def redact_url(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    head, sep, tail = url.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, credentials = head.partition("//")
    user = credentials.split(":", 1)[0]
    return f"{scheme}//{user}:***@{tail}"


def open_pool(settings: Settings, *, min_size: int = 1, max_size: int = 4) -> ConnectionPool:
    """A pool of dict-row connections; waits until the database answers."""
    pool = ConnectionPool(
        database_url(settings),
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "autocommit": False},
        open=False,
        name="rayetl",
    )
    pool.open(wait=True, timeout=30)
    return pool


def connect(settings: Settings, *, autocommit: bool = False) -> Connection:
    """One dict-row connection, for short-lived commands."""
    return Connection.connect(database_url(settings), row_factory=dict_row, autocommit=autocommit)
