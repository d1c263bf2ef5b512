"""The private stack every benchmark runs on: a fresh PostGIS and a local Ray, torn down afterwards."""

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from pydantic import SecretStr

from rayetl.actors.host import ensure_host
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


def settle(settings: Settings, *, quiet_s: float = 1.0, timeout_s: float = 60) -> None:
    """Wait until the stack is as a running service is between jobs, and the disk has caught up.

    The coordinator host starts the next job's coordinator once a job ends (see actors/host.py);
    a run timed while it starts would share the CPUs with it. Every tool, anchors included, starts
    from the same quiet machine.
    """
    host = ensure_host(settings)
    deadline = time.monotonic() + timeout_s
    while (spare := ray.get(host.spare.remote())) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if spare is not None:
        ray.get(spare.ping.remote(), timeout=timeout_s)  # answers once its start-up is done
    os.sync()  # the previous run's output still being written back would slow the next run's disk
    time.sleep(quiet_s)
