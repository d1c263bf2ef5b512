"""The local stack behind `rayetl up` / `down`: private PostGIS, a Ray head, the Serve app."""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from rayetl.devdb import DevDatabase
from rayetl.errors import RayetlError
from rayetl.settings import Settings
from rayetl.store.migrate import upgrade

__all__ = ["StackInfo", "down", "ensure_database", "stack_state", "up"]

logger = logging.getLogger(__name__)

_STATE_FILE = "stack.json"


@dataclass(frozen=True)
class StackInfo:
    """Where the running local stack answers."""

    api_url: str
    docs_url: str
    dashboard_url: str
    ray_address: str
    database: str


def dev_database(settings: Settings) -> DevDatabase:
    """The private PostGIS of this home folder."""
    return DevDatabase(settings.home / "postgres")


def ensure_database(settings: Settings) -> Settings:
    """Settings with a database URL: the configured one, else a started private PostGIS."""
    if settings.database_url is not None:
        return settings
    url = dev_database(settings).start()
    return settings.model_copy(update={"database_url": SecretStr(url)})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _is_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stack_state(settings: Settings) -> dict | None:
    """What `up` recorded, if its Ray head is still running."""
    path = settings.home / _STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return state if _is_alive(state["ray_pid"]) else None


def _start_ray_head(settings: Settings) -> tuple[int, str]:
    from rayetl.actors.runtime import worker_pool_env

    port = _free_port()
    log = open(settings.home / "ray-head.log", "ab")  # noqa: SIM115 - handed to the child process
    ray_cli = Path(sys.executable).with_name("ray")
    # The local stack is private to this machine: no token auth (see README, "Ray and auth").
    # A one-node cluster has nowhere to drain to: don't let shutdown wait Ray's default 30 s.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "3"}
    env = {**worker_pool_env(), **env}
    process = subprocess.Popen(
        [
            str(ray_cli), "start", "--head", "--block", f"--port={port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={settings.dashboard_port}",
            "--include-dashboard=true", "--disable-usage-stats",
            # Ray's fixed default (52365) would clash with any other Ray on this machine; without
            # its agent, the dashboard cannot take `ray job submit`.
            f"--dashboard-agent-listen-port={_free_port()}",
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    return process.pid, f"127.0.0.1:{port}"


def _wait_for(url: str, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RayetlError(
        f"{what} did not answer at {url} within {timeout_s:.0f}s; see the logs in the home folder"
    )


def _deploy_api(settings: Settings, address: str) -> None:
    import ray
    from ray import serve

    from rayetl.actors.janitor import ensure_janitor
    from rayetl.serve_app import RayetlApi

    # Serve's progress lines would bury the URLs that `up` prints.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ray.init(
        address=address, namespace=settings.ray_namespace, logging_level=logging.WARNING, log_to_driver=False
    )
    try:
        serve.start(http_options={"host": settings.api_host, "port": settings.api_port})
        serve.run(RayetlApi.bind(settings), name="rayetl", route_prefix="/", blocking=False)
        ensure_janitor(settings)
    finally:
        ray.shutdown()


def up(settings: Settings) -> StackInfo:
    """Start whatever of the stack is not running yet; safe to call again."""
    settings.home.mkdir(parents=True, exist_ok=True)
    for container in (settings.default_container, settings.default_output_container):
        (settings.local_storage_root / container).mkdir(parents=True, exist_ok=True)
    settings = ensure_database(settings)
    upgrade(settings)
    state = stack_state(settings)
    if state is None:
        pid, address = _start_ray_head(settings)
        state = {"ray_pid": pid, "ray_address": address}
        (settings.home / _STATE_FILE).write_text(json.dumps(state))
        (settings.home / "ray-address").write_text(address)
        _wait_for(f"http://127.0.0.1:{settings.dashboard_port}", timeout_s=60, what="the Ray dashboard")
        _deploy_api(settings, address)
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    _wait_for(f"{api_url}/api/health", timeout_s=90, what="the rayetl API")
    database = "private PostGIS in " + str(settings.home / "postgres")
    return StackInfo(
        api_url=api_url,
        docs_url=f"{api_url}/docs",
        dashboard_url=f"http://127.0.0.1:{settings.dashboard_port}",
        ray_address=state["ray_address"],
        database=database,
    )


def _wait_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _is_group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _is_group_alive(pgid)


def _stop_ray_head(state: dict) -> None:
    """Stop the head `up` started: SIGTERM to `ray start` lets it shut its node down cleanly."""
    pid = state["ray_pid"]
    os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, 20):
        return
    logger.warning("Ray head %s did not stop within 20 s; killing its process group", pid)
    os.killpg(pid, signal.SIGKILL)
    if not _wait_gone(pid, 10):
        raise RayetlError(f"could not stop the Ray head (process group {pid}); stop it with `kill -9 -{pid}`")


def _forget_ray_cluster(address: str) -> None:
    """Remove Ray's record of the stopped cluster, or a later ray.init() would try to join it."""
    record = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    with contextlib.suppress(OSError):
        # Ray records <node ip>:<port>; we know 127.0.0.1:<port>.
        if record.read_text().strip().rsplit(":", 1)[-1] == address.rsplit(":", 1)[-1]:
            record.unlink()


def down(settings: Settings) -> list[str]:
    """Stop exactly what `up` started: its Ray head (with Serve) and the private PostGIS."""
    stopped = []
    state = stack_state(settings)
    if state is not None:
        _stop_ray_head(state)
        _forget_ray_cluster(state["ray_address"])
        stopped.append(f"Ray head at {state['ray_address']}")
    (settings.home / _STATE_FILE).unlink(missing_ok=True)
    (settings.home / "ray-address").unlink(missing_ok=True)
    database = dev_database(settings)
    if settings.database_url is None and database.is_running():
        database.stop()
        stopped.append(f"private PostGIS in {database.root}")
    return stopped
