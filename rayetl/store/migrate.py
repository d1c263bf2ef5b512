"""Schema upgrades: numbered SQL migrations recorded in a version table, then pgstac's own."""

import logging
import re
from dataclasses import dataclass
from importlib import resources

from psycopg import Connection

from rayetl.settings import Settings
from rayetl.store.db import connect, database_url

__all__ = ["Migration", "available_migrations", "upgrade"]

logger = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
# Any constant works; it only has to be the same in every process that upgrades.
_LOCK_KEY = 7_204_211_001


@dataclass(frozen=True)
class Migration:
    """One SQL file of rayetl/store/migrations."""

    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    folder = resources.files("rayetl.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def _apply_audit_migrations(conn: Connection) -> list[str]:
    conn.execute("CREATE SCHEMA IF NOT EXISTS rayetl")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS rayetl.schema_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    applied = {row["version"] for row in conn.execute("SELECT version FROM rayetl.schema_migrations")}
    newly_applied = []
    for migration in available_migrations():
        if migration.version in applied:
            continue
        with conn.transaction():
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO rayetl.schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        logger.info("applied migration %04d_%s", migration.version, migration.name)
        newly_applied.append(f"{migration.version:04d}_{migration.name}")
    return newly_applied


def _migrate_pgstac(dsn: str) -> str:
    # Imported here: pypgstac pulls in a lot and only `db upgrade` needs it.
    from pypgstac.db import PgstacDB
    from pypgstac.migrate import Migrate

    with PgstacDB(dsn=dsn) as db:
        return Migrate(db).run_migration()


def upgrade(settings: Settings) -> dict[str, object]:
    """Bring the audit schema and pgstac up to date; safe to run again and concurrently."""
    with connect(settings, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            applied = _apply_audit_migrations(conn)
            # pgstac needs PostGIS in the public schema and does not create it itself.
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis SCHEMA public")
            pgstac_version = _migrate_pgstac(database_url(settings))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return {"applied": applied, "pgstac_version": pgstac_version}
