"""What the private development services (PostgreSQL in devdb, Azurite in devazurite) share."""

import contextlib
import fcntl
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = ["folder_lock", "free_port", "is_port_free", "log_tail"]


@contextlib.contextmanager
def folder_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on a service's folder (a `.lock` file in it).

    Two processes (pytest-xdist workers, two CLI calls) must not both set up or start a server in
    one folder; the lock is released when the file closes, even if the process dies.
    """
    with open(root / ".lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def free_port(host: str) -> int:
    """A TCP port nobody listens on now, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now."""
    # SO_REUSEADDR like the servers do, so our own TIME_WAIT connections don't count as "taken".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a server's log, for an error message."""
    if not path.exists():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
