"""Private PostgreSQL + PostGIS cluster in a project folder, from the system's binaries."""

import logging
import os
import pwd
import secrets
import shutil
import subprocess
from functools import cached_property
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from rayetl.dev_services import folder_lock, free_port, is_port_free, log_tail
from rayetl.errors import RayetlError

__all__ = ["DevDatabase", "DevDatabaseError", "find_bindir"]

logger = logging.getLogger(__name__)

SUPERUSER = "rayetl"
DATABASE = "rayetl"
HOST = "127.0.0.1"
SERVER_USER = "postgres"
INSTALL_HINT = (
    "Install them with `apt-get install postgresql-15-postgis-3` (Debian/Ubuntu), "
    "or put the folder holding initdb and pg_ctl on PATH."
)

# A dev/test box: Ray workers open many connections, and losing the last commits in a crash is
# acceptable (synchronous_commit=off), but a corrupt cluster is not, so fsync stays on.
SERVER_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "128MB",
    "synchronous_commit": "off",
}


class DevDatabaseError(RayetlError):
    """The private PostgreSQL cannot be found, created, started or reached."""


class DevDatabase:
    """A private cluster in one folder: data, socket, server log, password and port files."""

    def __init__(self, root: Path):
        self.root = Path(root).absolute()
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log_file = self.root / "postgres.log"
        self.password_file = self.root / "password"
        self.port_file = self.root / "port"
        # PostgreSQL refuses to run as root, so root runs it as the packages' `postgres` user.
        self._as_server_user = os.geteuid() == 0

    @cached_property
    def bindir(self) -> Path:
        """Folder of initdb and pg_ctl."""
        return find_bindir()

    def start(self) -> str:
        """Create the cluster if needed, start it if stopped, and return the URL of `rayetl`."""
        self._prepare_root()
        with folder_lock(self.root):
            if not self._is_initialized():
                self._init()
            if not self.is_running():
                self._start_server()
            self._create_database()
        return self.url()

    def stop(self) -> None:
        """Stop the server (fast shutdown: roll back open transactions); no-op when stopped."""
        if not self._is_initialized():
            return
        with folder_lock(self.root):
            if self.is_running():
                self._run(self._pg_ctl, "stop", "-D", self.data_dir, "-m", "fast", "-w", "-t", "60")
                logger.info("private PostgreSQL in %s stopped", self.root)

    def is_running(self) -> bool:
        """Whether the server of this folder runs."""
        if not self._is_initialized():
            return False
        return self._run(self._pg_ctl, "status", "-D", self.data_dir, check=False).returncode == 0

    def url(self) -> str:
        """URL of the `rayetl` database, password included."""
        return self.dsn_for(DATABASE)

    def dsn_for(self, dbname: str) -> str:
        """URL of database `dbname` in this cluster, password included."""
        if not (self.password_file.exists() and self.port_file.exists()):
            raise DevDatabaseError(
                f"no private PostgreSQL in {self.root} yet. Start it with `rayetl dev-db start`."
            )
        password = quote(self.password_file.read_text().strip(), safe="")
        port = int(self.port_file.read_text())
        return f"postgresql://{SUPERUSER}:{password}@{HOST}:{port}/{quote(dbname, safe='')}"

    @property
    def _pg_ctl(self) -> Path:
        return self.bindir / "pg_ctl"

    def _is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self._as_server_user:
            return
        os.chown(self.root, *_server_user_ids())
        # Fail rather than fall back to a folder under /var/tmp: a world-writable parent needs
        # ownership and symlink checks, and the data would hide where `rm -rf .rayetl` misses it.
        if self._run("test", "-w", self.root, check=False).returncode != 0:
            closed = [p for p in reversed(self.root.parents) if not p.stat().st_mode & 0o001]
            why = f" ({closed[0]} is not searchable by other users)" if closed else ""
            raise DevDatabaseError(
                f"PostgreSQL refuses to run as root, so rayetl runs it as the '{SERVER_USER}' "
                f"user, who cannot write to {self.root}{why}. Choose a folder it can reach, "
                "e.g. RAYETL_HOME=/var/lib/rayetl, or run rayetl as a normal user."
            )

    def _init(self) -> None:
        if not self.password_file.exists():
            self._write(self.password_file, secrets.token_urlsafe(24))
        self._run(
            self.bindir / "initdb",
            "-D",
            self.data_dir,
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            f"--pwfile={self.password_file}",
            "--encoding=UTF8",
            # C collation: the same sort order on every machine, whatever locales are installed.
            "--no-locale",
        )
        # Our settings live in their own file, rewritten at each start, so a port change or a
        # new setting in this module reaches existing clusters too.
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'rayetl.conf'\n")
        logger.info("private PostgreSQL created in %s", self.root)

    def _start_server(self) -> None:
        port = self._choose_port()
        settings = {
            **SERVER_SETTINGS,
            "listen_addresses": HOST,
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
        }
        conf = "".join(f"{name} = '{_conf_quote(value)}'\n" for name, value in settings.items())
        self._write(self.data_dir / "rayetl.conf", conf)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if self._as_server_user:
            os.chown(self.socket_dir, *_server_user_ids())
        start = [self._pg_ctl, "start", "-D", self.data_dir, "-l", self.log_file, "-w", "-t", "60"]
        result = self._run(*start, check=False)
        if result.returncode != 0:
            raise DevDatabaseError(
                f"PostgreSQL in {self.data_dir} did not start: {result.stderr.strip()}\n"
                f"Last lines of {self.log_file}:\n{log_tail(self.log_file)}"
            )
        logger.info("private PostgreSQL in %s listens on %s:%d", self.root, HOST, port)

    def _choose_port(self) -> int:
        port = int(self.port_file.read_text()) if self.port_file.exists() else None
        if port is not None and is_port_free(HOST, port):
            return port
        new_port = free_port(HOST)
        if port is not None:
            logger.warning("port %d is taken; private PostgreSQL moves to %d", port, new_port)
        self._write(self.port_file, f"{new_port}\n")
        return new_port

    def _create_database(self) -> None:
        try:
            with psycopg.connect(self.dsn_for("postgres"), autocommit=True, connect_timeout=10) as conn:
                query = "SELECT 1 FROM pg_database WHERE datname = %s"
                if conn.execute(query, (DATABASE,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        except psycopg.OperationalError as exc:
            raise DevDatabaseError(
                f"private PostgreSQL in {self.root} runs but refuses connections: {exc}. See {self.log_file}."
            ) from exc

    def _write(self, path: Path, text: str) -> None:
        # 0600 from the start (O_EXCL after unlink) so the password is never readable by others.
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        if self._as_server_user:
            os.chown(path, *_server_user_ids())

    def _run(self, *args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(arg) for arg in args]
        if self._as_server_user:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        # cwd="/": the server user may not be allowed into the caller's working folder.
        result = subprocess.run(cmd, cwd="/", capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise DevDatabaseError(f"`{' '.join(cmd)}` failed ({result.returncode}): {output}")
        return result


def find_bindir() -> Path:
    """Folder of the server binaries: `pg_config --bindir`, the newest Debian one, or PATH."""
    candidates = []
    if pg_config := shutil.which("pg_config"):
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    # Debian keeps each major version's server binaries side by side, off PATH.
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    # pg_config may come from a client-only install (libpq-dev), hence the check for initdb.
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise DevDatabaseError(f"PostgreSQL server binaries (initdb, pg_ctl) not found. {INSTALL_HINT}")


def _version(bindir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in bindir.parent.name.split(".") if part.isdigit())


def _server_user_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError as exc:
        raise DevDatabaseError(
            f"as root, rayetl runs PostgreSQL as the '{SERVER_USER}' user, which does not exist. "
            "The postgresql packages create it: `apt-get install postgresql-15-postgis-3`."
        ) from exc
    return entry.pw_uid, entry.pw_gid


def _conf_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")
