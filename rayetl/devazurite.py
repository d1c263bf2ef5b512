"""Private Azurite blob service (Azure Blob Storage emulator) in a project folder, for tests and dev."""

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from rayetl.dev_services import folder_lock, free_port, log_tail
from rayetl.errors import RayetlError

__all__ = ["AZURITE_VERSION", "DevAzurite", "DevAzuriteError", "find_azurite"]

logger = logging.getLogger(__name__)

# The version the Makefile installs into .azurite/ (keep both in step).
AZURITE_VERSION = "3.35.0"
HOST = "127.0.0.1"
# Azurite's well-known development account: public, documented and the same everywhere.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PROJECT_AZURITE = Path(__file__).resolve().parents[1] / ".azurite"
INSTALL_HINT = (
    f"Install it with `make install`, or `npm install --prefix .azurite azurite@{AZURITE_VERSION}` "
    "from the repository root (needs Node.js and npm: `apt-get install nodejs npm`)."
)
# --skipApiVersionCheck: the Azure SDK sends API versions newer than the emulator knows;
# --loose: ignore headers Azurite does not implement instead of failing the request.
SERVER_FLAGS = ("--skipApiVersionCheck", "--disableTelemetry", "--silent", "--loose")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PORT_ATTEMPTS = 3


class DevAzuriteError(RayetlError):
    """The private Azurite cannot be found, started or reached."""


class DevAzurite:
    """An Azurite blob service whose data, log, port and pid files live in one folder."""

    def __init__(self, root: Path):
        self.root = Path(root).absolute()
        self.data_dir = self.root / "data"
        self.log_file = self.root / "azurite.log"
        self.port_file = self.root / "port"
        self.pid_file = self.root / "pid"

    def start(self) -> str:
        """Start the service unless it runs, wait until it answers; returns its connection string."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with folder_lock(self.root):
            if not self.is_running():
                self._start_server()
        return self.connection_string()

    def stop(self) -> None:
        """Stop the service (SIGTERM, then SIGKILL); no-op when it does not run."""
        with folder_lock(self.root):
            pid = self._running_pid()
            if pid is None:
                return
            _terminate(pid)
            self.pid_file.unlink(missing_ok=True)
            logger.info("private Azurite in %s stopped", self.root)

    def is_running(self) -> bool:
        """Whether the service of this folder runs."""
        return self._running_pid() is not None

    def blob_endpoint(self) -> str:
        """URL of the development account's blob service."""
        if not self.port_file.exists():
            raise DevAzuriteError(f"no private Azurite in {self.root} yet: start it first")
        return f"http://{HOST}:{int(self.port_file.read_text())}/{ACCOUNT_NAME}"

    def connection_string(self) -> str:
        """Connection string of the development account, for adlfs, the Azure SDK and GDAL."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint()};"
        )

    def _start_server(self) -> None:
        command = find_azurite()
        self.data_dir.mkdir(exist_ok=True)
        # A port chosen free can be taken before Azurite binds it: try again on another.
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = free_port(HOST)
            process = self._spawn(command, port)
            if self._wait_until_answers(process, port):
                self.port_file.write_text(f"{port}\n")
                self.pid_file.write_text(f"{process.pid}\n")
                logger.info("private Azurite in %s listens on %s:%d", self.root, HOST, port)
                return
            if process.poll() is None:  # alive but silent: not a port clash, give up
                _terminate(process.pid)
                break
            logger.warning("Azurite did not start on port %d (attempt %d/%d)", port, attempt, PORT_ATTEMPTS)
        raise DevAzuriteError(
            f"Azurite in {self.root} did not start. Last lines of {self.log_file}:\n{log_tail(self.log_file)}"
        )

    def _spawn(self, command: list[str], port: int) -> subprocess.Popen:
        args = [*command, "--blobHost", HOST, "--blobPort", str(port), "--location", str(self.data_dir)]
        with self.log_file.open("ab") as log:
            # Its own session: a Ctrl-C meant for the caller does not stop it half-way, and stop()
            # ends the whole group (npm's launcher script and node).
            return subprocess.Popen(
                [*args, *SERVER_FLAGS],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_until_answers(self, process: subprocess.Popen, port: int) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(OSError):  # refused until it listens
                with socket.create_connection((HOST, port), timeout=1):
                    return True
            time.sleep(0.1)
        return False

    def _running_pid(self) -> int | None:
        if not self.pid_file.exists():
            return None
        pid = int(self.pid_file.read_text())
        # The pid may have been reused by another program since: check it is Azurite's.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"azurite" in cmdline else None


def find_azurite() -> list[str]:
    """The command that runs Azurite's blob service: the project's .azurite/, else PATH."""
    if (node := shutil.which("node") or shutil.which("nodejs")) is None:
        raise DevAzuriteError(f"Node.js (`node`) not found, which Azurite needs. {INSTALL_HINT}")
    script = PROJECT_AZURITE / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
    if script.is_file():
        # node + script rather than the .bin launcher: one process, whose pid stop() can end.
        return [node, str(script)]
    if found := shutil.which("azurite-blob"):
        return [found]
    raise DevAzuriteError(f"Azurite not found in {PROJECT_AZURITE} nor on PATH. {INSTALL_HINT}")


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have ended on its own
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _is_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _is_alive(pid: int) -> bool:
    # Our own child stays a zombie until reaped: reap it, which also tells whether it ended.
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        return reaped == 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
