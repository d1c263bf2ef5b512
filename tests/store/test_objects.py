"""Containers over real fsspec backends: local folders in tmp_path and memory:// buckets."""

import os
import pickle
import uuid
from datetime import datetime

import fsspec
import pytest

from rayetl.errors import InvalidRequest, NotFound
from rayetl.settings import Settings
from rayetl.store.objects import Container, ObjectInfo, list_containers, open_container


def make_settings(home, **kwargs) -> Settings:
    # Explicit values so that RAYETL_* variables in the environment cannot leak into the tests.
    kwargs = {"storage_root": None, "containers": {}, "storage_options": {}} | kwargs
    return Settings(home=home, **kwargs)


@pytest.fixture
def memory_url():
    # The memory filesystem is shared by the whole process: one fresh bucket per test.
    url = f"memory://test-{uuid.uuid4().hex[:12]}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


@pytest.fixture(params=["local", "memory"])
def container(request, tmp_path, memory_url) -> Container:
    if request.param == "local":
        return open_container(make_settings(tmp_path), "bronze", create=True)
    return open_container(make_settings(tmp_path, containers={"bronze": memory_url}), "bronze")


def test_write_bytes_creates_folders_and_reads_back(container):
    container.write_bytes("a/b/c.txt", b"hello")
    assert container.read_bytes("a/b/c.txt") == b"hello"
    assert container.exists("a/b/c.txt")
    assert container.exists("a/b")
    assert not container.exists("a/nope.txt")


def test_write_bytes_replaces_existing_file(container):
    container.write_bytes("x.txt", b"first")
    container.write_bytes("x.txt", b"second")
    assert container.read_bytes("x.txt") == b"second"
    assert [info.path for info in container.list()] == ["x.txt"]


def test_open_writes_and_reads_text(container):
    with container.open("notes/readme.md", "w") as f:
        f.write("# hi\n")
    with container.open("notes/readme.md", "r") as f:
        assert f.read() == "# hi\n"


def test_info_reports_size_and_modified(container):
    container.write_bytes("data/roads.csv", b"id,name\n1,A1\n")
    info = container.info("data/roads.csv")
    assert info == ObjectInfo(path="data/roads.csv", size_bytes=13, modified=info.modified)
    assert isinstance(info.modified, datetime) and info.modified.tzinfo is not None


def test_info_on_folder_asks_for_a_file(container):
    container.write_bytes("data/roads.csv", b"x")
    with pytest.raises(InvalidRequest, match="'data' in container 'bronze' is a folder"):
        container.info("data")


@pytest.fixture
def filled(container) -> Container:
    for path in [
        "a.csv",
        "data/roads.GeoJSON",
        "data/rivers.csv",
        "data/sub/lakes.gpkg",
        "database.txt",
        "archive.tar.gz",
    ]:
        container.write_bytes(path, path.encode())
    return container


def paths(infos: list[ObjectInfo]) -> list[str]:
    return [info.path for info in infos]


def test_list_is_recursive_and_sorted(filled):
    assert paths(filled.list()) == [
        "a.csv",
        "archive.tar.gz",
        "data/rivers.csv",
        "data/roads.GeoJSON",
        "data/sub/lakes.gpkg",
        "database.txt",
    ]
    assert filled.list("data/sub/")[0] == filled.info("data/sub/lakes.gpkg")


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("data/", ["data/rivers.csv", "data/roads.GeoJSON", "data/sub/lakes.gpkg"]),
        ("data", ["data/rivers.csv", "data/roads.GeoJSON", "data/sub/lakes.gpkg", "database.txt"]),
        ("data/ro", ["data/roads.GeoJSON"]),
        ("./data/sub", ["data/sub/lakes.gpkg"]),
        ("a.csv", ["a.csv"]),
        ("nothing/", []),
        ("a.csv/inside", []),
    ],
)
def test_list_filters_by_prefix(filled, prefix, expected):
    assert paths(filled.list(prefix)) == expected


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        (["csv"], ["a.csv", "data/rivers.csv"]),
        (["geojson", ".GPKG"], ["data/roads.GeoJSON", "data/sub/lakes.gpkg"]),
        (["tar.gz"], ["archive.tar.gz"]),
        (["tif"], []),
    ],
)
def test_list_filters_by_extension_case_insensitively(filled, extensions, expected):
    assert paths(filled.list(extensions=extensions)) == expected


def test_list_limit_keeps_the_first_paths(filled):
    assert paths(filled.list(limit=2)) == ["a.csv", "archive.tar.gz"]
    assert paths(filled.list("data/", extensions=["csv", "gpkg"], limit=1)) == ["data/rivers.csv"]
    with pytest.raises(InvalidRequest, match="limit must be 0 or more, got -1"):
        filled.list(limit=-1)


def test_list_of_empty_container_is_empty(container):
    assert container.list() == []


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.info("missing/file.csv"),
        lambda c: c.read_bytes("missing/file.csv"),
        lambda c: c.open("missing/file.csv"),
        lambda c: c.delete("missing/file.csv"),
        lambda c: c.move("missing/file.csv", "elsewhere.csv"),
        lambda c: c.get_file("missing/file.csv", "unused"),
    ],
    ids=["info", "read_bytes", "open", "delete", "move", "get_file"],
)
def test_missing_file_raises_not_found_naming_container_and_path(container, call, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # get_file's local target must not land in the repository
    with pytest.raises(NotFound, match="file 'missing/file.csv' not found in container 'bronze'"):
        call(container)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../x", "path '../x' leaves container 'bronze': use a path relative to the container"),
        ("a/../../x", "leaves container 'bronze'"),
        ("a/..", "leaves container 'bronze'"),
        ("/etc/passwd", "is absolute: use a path relative to the container, e.g. 'etc/passwd'"),
        ("..\\x", "contains a backslash: separate folders with '/'"),
        ("a\\..\\..\\x", "contains a backslash"),
        ("a\x00.csv", "contains a NUL byte"),
        ("file:///etc/passwd", "is a URL: use a path relative to the container"),
        ("memory://other/x", "is a URL"),
    ],
)
def test_paths_leaving_the_container_are_rejected(container, path, message):
    for call in (
        container.resolve,
        container.exists,
        container.read_bytes,
        lambda p: container.write_bytes(p, b"x"),
        container.list,
    ):
        with pytest.raises(InvalidRequest, match=message.replace("\\", "\\\\")):
            call(path)
    assert container.list() == []


def test_empty_path_is_not_a_file(container):
    with pytest.raises(InvalidRequest, match="empty path in container 'bronze': name a file"):
        container.write_bytes("./", b"x")


def test_resolve_gives_the_full_url(tmp_path, memory_url):
    local = open_container(make_settings(tmp_path), "bronze", create=True)
    assert local.url == f"file://{tmp_path}/storage/bronze"
    assert local.resolve("a//./b.csv") == f"file://{tmp_path}/storage/bronze/a/b.csv"
    assert local.resolve("") == local.url
    memory = open_container(make_settings(tmp_path, containers={"lake": memory_url}), "lake")
    assert memory.resolve("a/b.csv") == f"{memory_url}/a/b.csv"
    memory.write_bytes("a/b.csv", b"x")
    with fsspec.open(memory.resolve("a/b.csv"), "rb") as f:
        assert f.read() == b"x"


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("secret")
    return folder


def test_symlink_leading_outside_a_local_container_is_rejected(tmp_path, outside):
    container = open_container(make_settings(tmp_path), "bronze", create=True)
    root = tmp_path / "storage" / "bronze"
    (root / "file-link.txt").symlink_to(outside / "secret.txt")
    (root / "dir-link").symlink_to(outside)
    for path in ("file-link.txt", "dir-link/secret.txt", "dir-link/new.txt"):
        with pytest.raises(InvalidRequest, match="symbolic link that points outside the container"):
            container.read_bytes(path)
    with pytest.raises(InvalidRequest, match="symbolic link"):
        container.write_bytes("dir-link/new.txt", b"x")
    assert not (outside / "new.txt").exists()
    assert container.list() == []


def test_symlink_inside_a_local_container_is_followed(tmp_path):
    container = open_container(make_settings(tmp_path), "bronze", create=True)
    container.write_bytes("real/a.txt", b"a")
    (tmp_path / "storage" / "bronze" / "alias.txt").symlink_to("real/a.txt")
    assert container.read_bytes("alias.txt") == b"a"
    assert paths(container.list()) == ["alias.txt", "real/a.txt"]


def test_put_file_and_get_file_round_trip(container, tmp_path):
    source = tmp_path / "upload.bin"
    source.write_bytes(b"\x00\x01payload")
    info = container.put_file(source, "in/upload.bin")
    assert (info.path, info.size_bytes) == ("in/upload.bin", 9)
    target = tmp_path / "down" / "deeper" / "copy.bin"
    container.get_file("in/upload.bin", target)
    assert target.read_bytes() == b"\x00\x01payload"


def test_put_file_of_missing_local_file_leaves_nothing(container, tmp_path):
    with pytest.raises(NotFound, match="local file '.*nope.bin' not found"):
        container.put_file(tmp_path / "nope.bin", "in/nope.bin")
    assert container.list() == []


def test_local_target_becomes_the_file_when_the_block_ends(container):
    with container.local_target("out/cog.tif") as local:
        with open(local, "wb") as file:
            file.write(b"written by GDAL")
        assert not container.exists("out/cog.tif")  # not before the writer is done
    assert container.read_bytes("out/cog.tif") == b"written by GDAL"
    assert [entry.path for entry in container.list()] == ["out/cog.tif"]


def test_local_target_that_fails_leaves_nothing(container):
    with pytest.raises(RuntimeError, match="writer failed"), container.local_target("out/cog.tif") as local:
        with open(local, "wb") as file:
            file.write(b"half a file")
        raise RuntimeError("writer failed")
    assert not container.exists("out/cog.tif")
    assert container.list() == []


def test_local_target_of_a_local_container_is_inside_it(tmp_path):
    container = open_container(make_settings(tmp_path), "bronze", create=True)
    with container.local_target("out/cog.tif") as local:
        # Written in place: renamed at the end, never copied (a COG may be gigabytes).
        assert os.path.dirname(local) == str(tmp_path / "storage" / "bronze" / "out")
        with open(local, "wb") as file:
            file.write(b"cog")
    assert container.read_bytes("out/cog.tif") == b"cog"


def test_failed_local_write_leaves_no_temporary_file(tmp_path):
    container = open_container(make_settings(tmp_path), "bronze", create=True)
    container.write_bytes("folder/a.txt", b"a")
    # The temporary file is written, then cannot replace a folder: an OSError, not NotFound.
    with pytest.raises(IsADirectoryError):
        container.write_bytes("folder", b"x")
    root = tmp_path / "storage" / "bronze"
    assert os.listdir(root) == ["folder"]
    assert os.listdir(root / "folder") == ["a.txt"]


def test_move_renames_and_creates_folders(container):
    container.write_bytes("in/a.csv", b"a")
    container.write_bytes("done/old.csv", b"old")
    container.move("in/a.csv", "done/2024/a.csv")
    assert not container.exists("in/a.csv")
    assert container.read_bytes("done/2024/a.csv") == b"a"
    container.write_bytes("in/b.csv", b"b")
    container.move("in/b.csv", "done/old.csv")
    assert container.read_bytes("done/old.csv") == b"b"


def test_delete_removes_the_file(container):
    container.write_bytes("a.csv", b"a")
    container.delete("a.csv")
    assert not container.exists("a.csv")


def test_other_os_errors_stay_os_errors(tmp_path):
    container = open_container(make_settings(tmp_path), "bronze", create=True)
    container.write_bytes("folder/a.csv", b"a")
    with pytest.raises(IsADirectoryError):
        container.read_bytes("folder")


def test_unknown_container_message_lists_known_ones(tmp_path, memory_url):
    settings = make_settings(tmp_path, containers={"lake": memory_url})
    open_container(settings, "bronze", create=True)
    with pytest.raises(NotFound) as caught:
        open_container(settings, "silver")
    message = str(caught.value)
    assert message.startswith("unknown container 'silver'. Known containers: bronze, lake.")
    assert "`rayetl storage put` creates a local container" in message
    assert "RAYETL_CONTAINERS" in message


def test_unknown_container_message_when_there_are_none(tmp_path):
    with pytest.raises(NotFound, match="Known containers: none yet"):
        open_container(make_settings(tmp_path), "bronze")


def test_create_makes_the_local_folder(tmp_path):
    settings = make_settings(tmp_path, storage_root=tmp_path / "elsewhere")
    container = open_container(settings, "raw-2024", create=True)
    assert (tmp_path / "elsewhere" / "raw-2024").is_dir()
    assert container.name == "raw-2024"
    assert open_container(settings, "raw-2024").url == container.url


def test_configured_container_takes_precedence_over_local_folder(tmp_path, memory_url):
    (tmp_path / "storage" / "bronze").mkdir(parents=True)
    settings = make_settings(tmp_path, containers={"bronze": memory_url})
    container = open_container(settings, "bronze")
    assert container.url == memory_url
    container.write_bytes("a.txt", b"a")
    assert not (tmp_path / "storage" / "bronze" / "a.txt").exists()


def test_storage_options_reach_the_filesystem(tmp_path, memory_url):
    settings = make_settings(
        tmp_path,
        containers={"lake": memory_url},
        storage_options={"memory": {"label": "lake"}, "az": {"account_name": "x"}},
    )
    container = open_container(settings, "lake")
    assert container.fs.storage_options == {"label": "lake"}


def test_az_container_gets_the_az_storage_options(tmp_path):
    # Building an adlfs filesystem makes no request, so this runs without Azure.
    settings = make_settings(
        tmp_path,
        containers={"bronze": "az://bronze/"},
        storage_options={"az": {"account_name": "devstoreaccount1", "anon": True}},
    )
    container = open_container(settings, "bronze")
    assert (type(container.fs).__name__, container.fs.account_name) == (
        "AzureBlobFileSystem",
        "devstoreaccount1",
    )
    assert container.resolve("tiles/a.tif") == "az://bronze/tiles/a.tif"


def test_unopenable_url_names_the_container_and_setting(tmp_path):
    settings = make_settings(tmp_path, containers={"lake": "nosuchproto://lake"})
    with pytest.raises(InvalidRequest, match="container 'lake' is configured with 'nosuchproto"):
        open_container(settings, "lake")


def test_list_containers_merges_local_and_configured(tmp_path, memory_url):
    storage = tmp_path / "storage"
    for name in ("silver", "bronze", ".cache", "Not_Valid"):
        (storage / name).mkdir(parents=True)
    (storage / "file-not-folder").write_text("x")
    settings = make_settings(tmp_path, containers={"lake": memory_url})
    assert list_containers(settings) == ["bronze", "lake", "silver"]
    assert list_containers(make_settings(tmp_path / "empty")) == []


@pytest.mark.parametrize("name", ["ab", "Bronze", "a_b", "-ab", "ab-", "a--b", "a.b", "x" * 64, ""])
def test_invalid_container_names_are_rejected_with_the_rule(tmp_path, name):
    with pytest.raises(InvalidRequest, match=f"invalid container name '{name}': use 3 to 63"):
        open_container(make_settings(tmp_path), name, create=True)
    assert not (tmp_path / "storage").exists()


@pytest.mark.parametrize("name", ["abc", "raw-2024", "0-a-1", "x" * 63])
def test_valid_container_names_are_accepted(tmp_path, name):
    assert open_container(make_settings(tmp_path), name, create=True).name == name


def test_container_survives_pickling(container):
    # Containers travel into Ray tasks as arguments.
    container.write_bytes("a.txt", b"a")
    copy = pickle.loads(pickle.dumps(container))
    assert (copy.name, copy.url, copy.read_bytes("a.txt")) == ("bronze", container.url, b"a")
