"""Real services, started once per test session: a private PostGIS, a local Ray, Serve over HTTP."""

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from rayetl.actors.runtime import worker_pool_env
from rayetl.devdb import DevDatabase
from rayetl.models import JobRecord
from rayetl.settings import Settings
from rayetl.store.db import open_pool
from rayetl.store.migrate import upgrade

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"
API_TOKEN = "test-token-7f3a"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], *, timeout_s: float, what: str, poll_s: float = 0.1):
    """Poll condition until it returns something truthy; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="session")
def session_root() -> Iterator[Path]:
    # Not pytest's tmp_path: its parent is mode 700, and PostgreSQL runs as `postgres` under root.
    root = Path(tempfile.mkdtemp(prefix="rayetl-test-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def database(session_root: Path) -> Iterator[DevDatabase]:
    db = DevDatabase(session_root / "postgres")
    db.start()
    yield db
    db.stop()


@pytest.fixture(scope="session")
def settings(session_root: Path, database: DevDatabase) -> Settings:
    settings = Settings(
        home=session_root / "home",
        database_url=SecretStr(database.url()),
        storage_root=session_root / "storage",
        api_port=free_port(),
        janitor_interval_s=1.0,
        janitor_stale_after_s=4.0,
        retry_backoff_s=0.05,
        retry_backoff_max_s=0.5,
        progress_flush_s=0.2,
    )
    for container in (settings.default_container, settings.default_output_container):
        (settings.local_storage_root / container).mkdir(parents=True)
    upgrade(settings)
    return settings


@pytest.fixture(scope="session")
def pool(settings: Settings):
    pool = open_pool(settings, min_size=1, max_size=8)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def ray_cluster(settings: Settings) -> Iterator[str]:
    """A local Ray cluster owned by the test session; yields its address."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.update(worker_pool_env())
    # "local": never join a cluster another process left in /tmp/ray/ray_current_cluster.
    ray.init(address="local", namespace=settings.ray_namespace, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def api(settings: Settings, ray_cluster: str) -> Iterator[httpx.Client]:
    """The Serve app over real HTTP, plus a second app at /secured that requires a token."""
    from ray import serve

    from rayetl.serve_app import RayetlApi

    serve.start(http_options={"host": "127.0.0.1", "port": settings.api_port})
    serve.run(RayetlApi.bind(settings), name="rayetl", route_prefix="/")
    secured = settings.model_copy(update={"api_token": SecretStr(API_TOKEN)})
    serve.run(
        RayetlApi.options(name="rayetl-api-secured").bind(secured), name="secured", route_prefix="/secured"
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{settings.api_port}", timeout=60) as client:
        yield client
    serve.shutdown()


@pytest.fixture
def wait_for_job(pool) -> Callable[..., JobRecord]:
    """Wait for a job to end, woken by its end's notification (as rayetl's own waiters are)."""

    from rayetl.actors import submission

    def wait(job_id: str, *, timeout_s: float = 60) -> JobRecord:
        return submission.wait_for_job(job_id, pool=pool, timeout_s=timeout_s)

    return wait


@pytest.fixture
def unique() -> str:
    """A value that makes a job's params, and so its id, unique to one test run."""
    return f"{time.time_ns()}"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("the shared corpus (../shared/corpus) is not present")
    return CORPUS


AZURE_CONTAINERS = ("az-bronze", "az-silver")


@pytest.fixture(scope="session")
def azurite(session_root: Path) -> Iterator[str]:
    """A private Azurite blob service for the session; yields its connection string."""
    from rayetl.devazurite import DevAzurite, DevAzuriteError, find_azurite

    try:
        find_azurite()
    except DevAzuriteError as exc:
        # CI installs Azurite (`make install`): there a missing one is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"Azurite is required in CI: {exc}")
        pytest.skip(f"Azurite is not installed: {exc}")
    service = DevAzurite(session_root / "azurite")
    connection_string = service.start()
    yield connection_string
    service.stop()


@pytest.fixture(scope="session")
def azure_settings(settings: Settings, azurite: str) -> Settings:
    """The session's settings with Azure containers az-bronze (default) and az-silver on Azurite."""
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(azurite) as service:
        for name in AZURE_CONTAINERS:
            service.create_container(name)
    return settings.model_copy(
        update={
            "containers": {name: f"az://{name}" for name in AZURE_CONTAINERS},
            "storage_options": {"az": {"connection_string": azurite}},
            "default_container": AZURE_CONTAINERS[0],
            "default_output_container": AZURE_CONTAINERS[1],
        }
    )
