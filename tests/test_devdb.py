import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from rayetl.devdb import DevDatabase, DevDatabaseError


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Not tmp_path: as root, the server runs as `postgres`, who cannot enter the mode-700
    # /tmp/pytest-of-root.
    path = Path(tempfile.mkdtemp(prefix="rayetl-devdb-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def devdb(workdir: Path) -> Iterator[DevDatabase]:
    db = DevDatabase(workdir / "postgres")
    db.start()
    yield db
    db.stop()


def _port(url: str) -> int:
    return urlsplit(url).port


def test_url_holds_password_and_loopback_address(devdb: DevDatabase) -> None:
    url = urlsplit(devdb.start())
    assert url.hostname == "127.0.0.1"
    assert url.username == "rayetl"
    assert url.password == devdb.password_file.read_text().strip()
    assert url.path == "/rayetl"


def test_password_file_is_private(devdb: DevDatabase) -> None:
    assert devdb.password_file.stat().st_mode & 0o777 == 0o600


def test_postgis_extension_can_be_created(devdb: DevDatabase) -> None:
    with psycopg.connect(devdb.start()) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        point = conn.execute("SELECT ST_AsText(ST_Point(1, 2, 4326))").fetchone()[0]
    assert point == "POINT(1 2)"


def test_server_is_tuned_for_development_but_keeps_fsync(devdb: DevDatabase) -> None:
    with psycopg.connect(devdb.start()) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in ("max_connections", "synchronous_commit", "fsync", "listen_addresses")
        }
    assert settings == {
        "max_connections": "300",
        "synchronous_commit": "off",
        "fsync": "on",
        "listen_addresses": "127.0.0.1",
    }


def test_dsn_for_names_another_database(devdb: DevDatabase) -> None:
    devdb.start()
    with psycopg.connect(devdb.dsn_for("postgres")) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "postgres"


def test_start_is_idempotent(devdb: DevDatabase) -> None:
    assert devdb.start() == devdb.start()
    assert devdb.is_running()


def test_stop_then_start_keeps_data_and_port(devdb: DevDatabase) -> None:
    url = devdb.start()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    devdb.stop()
    assert not devdb.is_running()
    assert devdb.start() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT id FROM kept").fetchall() == [(42,)]


def test_stop_is_idempotent(devdb: DevDatabase) -> None:
    devdb.start()
    devdb.stop()
    devdb.stop()
    assert not devdb.is_running()


def test_start_moves_to_a_free_port_when_its_port_is_taken(devdb: DevDatabase) -> None:
    old_port = _port(devdb.start())
    devdb.stop()
    with socket.socket() as squatter:
        # SO_REUSEADDR: the stopped server leaves TIME_WAIT connections on its old port.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        url = devdb.start()
    assert _port(url) != old_port
    assert int(devdb.port_file.read_text()) == _port(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_start_failure_reports_server_log(devdb: DevDatabase) -> None:
    devdb.stop()
    conf = devdb.data_dir / "postgresql.conf"
    original = conf.read_text()
    conf.write_text(original + "no_such_setting = 1\n")
    try:
        with pytest.raises(DevDatabaseError, match="no_such_setting"):
            devdb.start()
    finally:
        conf.write_text(original)
    assert devdb.start()


def test_url_before_start_says_how_to_start(workdir: Path) -> None:
    with pytest.raises(DevDatabaseError, match="rayetl dev-db start"):
        DevDatabase(workdir / "never-started").url()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to `postgres`")
def test_root_rejects_folder_postgres_cannot_reach() -> None:
    closed = Path(tempfile.mkdtemp(prefix="rayetl-devdb-closed-", dir="/tmp"))  # mode 0700
    try:
        with pytest.raises(DevDatabaseError, match=f"{closed} is not searchable"):
            DevDatabase(closed / "postgres").start()
    finally:
        shutil.rmtree(closed)
