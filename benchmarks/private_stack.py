"""The private stack every benchmark runs on: a fresh PostGIS and a local Ray, torn down afterwards."""

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from rayetl.actors.runtime import connect_ray
from rayetl.devdb import DevDatabase
from rayetl.settings import Settings
from rayetl.store.db import open_pool
from rayetl.store.migrate import upgrade


@contextmanager
def private_stack(**overrides: Any) -> Iterator[tuple[Settings, Any]]:
    """Settings and a connection pool of a migrated private PostGIS, with Ray joined."""
    root = Path(tempfile.mkdtemp(prefix="rayetl-bench-", dir="/tmp"))
    root.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
    database = DevDatabase(root / "postgres")
    try:
        settings = Settings(
            home=root, database_url=SecretStr(database.start()), storage_root=root / "storage", **overrides
        )
        upgrade(settings)
        connect_ray(settings)
        pool = open_pool(settings)
        try:
            yield settings, pool
        finally:
            pool.close()
    finally:
        database.stop()
        shutil.rmtree(root, ignore_errors=True)
