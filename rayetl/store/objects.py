"""Object storage: named containers over fsspec (local folders, memory://, az:// via adlfs, ...)."""

# Postponed annotations: the methods `list` and `open` would otherwise shadow the builtins in the
# annotations of the methods defined after them.
from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import get_protocol
from pydantic import BaseModel, ConfigDict

from rayetl.errors import InvalidRequest, NotFound
from rayetl.settings import Settings
from rayetl.store.azure_gdal import azure_gdal_env
from rayetl.store.object_names import check_container_name, is_container_name, normalize_path

__all__ = ["TMP_MARKER", "Container", "ObjectInfo", "list_containers", "open_container"]

logger = logging.getLogger(__name__)

# In the name of files and folders being written: listings never show them.
TMP_MARKER = ".rayetl-tmp-"
# Backends name the modification time differently: adlfs, s3fs, local, gcsfs, memory.
_MODIFIED_KEYS = ("last_modified", "LastModified", "mtime", "updated", "created")
# The protocols adlfs registers for Azure Blob Storage.
_AZURE_PROTOCOLS = frozenset({"az", "abfs", "abfss"})


class ObjectInfo(BaseModel):
    """A file in a container."""

    model_config = ConfigDict(frozen=True)

    path: str
    size_bytes: int
    modified: datetime | None


class Container:
    """A named root in an fsspec filesystem; every path is relative to it and confined to it."""

    def __init__(self, name: str, url: str, fs: AbstractFileSystem, root: str):
        self.name = name
        self.url = url
        self.fs = fs
        self._root = root.rstrip("/")
        # Only a local folder can hold symlinks, and they may lead out of it.
        self._real_root = os.path.realpath(root) if isinstance(fs, LocalFileSystem) else None
        # The Azure container (the account's top-level folder) holding the root, for /vsiaz/
        # paths and for telling "no such file" from "no such container".
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        self._azure_container = self._root.split("/")[0] if protocols & _AZURE_PROTOCOLS else None

    def __repr__(self) -> str:
        return f"Container(name={self.name!r}, url={self.url!r})"

    def resolve(self, path: str) -> str:
        """Full fsspec URL of `path`; raises InvalidRequest if it leaves the container."""
        rel = self._relative(path)
        return f"{self.url}/{rel}" if rel else self.url

    def exists(self, path: str) -> bool:
        """True when `path` names a file or folder in the container."""
        return self.fs.exists(self._join(self._relative(path)))

    def info(self, path: str) -> ObjectInfo:
        """Size and modification time of a file."""
        full = self._file(path)
        with self._not_found(path):
            entry = self.fs.info(full)
        if entry["type"] == "directory":
            raise InvalidRequest(
                f"path {path!r} in container {self.name!r} is a folder: name a file inside it"
            )
        return self._object_info(full, entry)

    def list(
        self,
        prefix: str = "",
        *,
        extensions: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[ObjectInfo]:
        """Files whose path starts with `prefix`, recursively, sorted by path."""
        if limit is not None and limit < 0:
            raise InvalidRequest(f"limit must be 0 or more, got {limit}")
        rel = self._relative(prefix)
        if prefix.endswith("/") and rel:
            rel += "/"
        # A prefix is a string prefix, as in blob stores: 'data/ro' matches 'data/roads.csv'.
        folder = rel.rpartition("/")[0]
        suffixes = tuple(f".{ext.lower().lstrip('.')}" for ext in extensions or ())
        found = []
        for full, entry in self.fs.find(self._join(folder), detail=True).items():
            info = self._object_info(full, entry)
            if not info.path.startswith(rel) or TMP_MARKER in info.path:
                continue
            if suffixes and not info.path.lower().endswith(suffixes):
                continue
            if self._real_root is not None and not self._is_local_file(full):
                continue
            found.append(info)
        if not found:
            # adlfs lists a missing Azure container as empty: say so rather than "no files".
            self._require_azure_container()
        found.sort(key=lambda info: info.path)
        return found[:limit]

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        """File object for `path`; writing creates the parent folders."""
        full = self._file(path)
        if set(mode) & set("wax"):
            self._make_parent(full)
            # A blob is uploaded when its file closes, in the caller's code: check the Azure
            # container now so that a missing one fails here, with a message that names it.
            self._require_azure_container()
        with self._not_found(path):
            return self.fs.open(full, mode, **kwargs)

    def read_bytes(self, path: str) -> bytes:
        """Whole content of a file."""
        full = self._file(path)
        with self._not_found(path):
            return self.fs.cat_file(full)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Create or replace a file with `data`."""
        with self._staged(self._file(path)) as target, self._missing_azure_container():
            self.fs.pipe_file(target, data)
        logger.debug("container %s: wrote %s (%d bytes)", self.name, path, len(data))

    def put_file(self, local_path: str | os.PathLike[str], path: str) -> ObjectInfo:
        """Upload a local file to `path`, replacing what was there."""
        if not os.path.isfile(local_path):
            raise NotFound(f"local file '{local_path}' not found: check the path of the upload")
        with self._staged(self._file(path)) as target, self._missing_azure_container():
            self.fs.put_file(os.fspath(local_path), target)
        logger.debug("container %s: uploaded %s", self.name, path)
        return self.info(path)

    @contextmanager
    def local_target(self, path: str) -> Iterator[str]:
        """A local file to write `path` through (GDAL writes files): it becomes `path` when the block ends.

        A local container is written in place, under a hidden name renamed over `path` at the end
        (no copy of what may be gigabytes); a remote one gets a temporary file, uploaded at the end.
        If the block raises, nothing appears at `path`.
        """
        full = self._file(path)
        if self._real_root is not None:
            with self._staged(full) as target:
                yield target
            return
        with tempfile.TemporaryDirectory(prefix="rayetl-") as tmp:
            local = os.path.join(tmp, full.rpartition("/")[2])
            yield local
            self.put_file(local, path)

    def get_file(self, path: str, local_path: str | os.PathLike[str]) -> None:
        """Download a file to `local_path`, creating its local parent folders."""
        full = self._file(path)
        Path(local_path).absolute().parent.mkdir(parents=True, exist_ok=True)
        with self._not_found(path):
            self.fs.get_file(full, os.fspath(local_path))

    def delete(self, path: str) -> None:
        """Delete a file."""
        full = self._file(path)
        with self._not_found(path):
            self.fs.rm_file(full)

    def delete_folder(self, path: str) -> None:
        """Delete a folder and everything under it; nothing happens when there is none."""
        full = self._file(path)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)

    @contextmanager
    def local_path(self, path: str, *, siblings: bool = False) -> Iterator[str]:
        """A local file path of `path` for libraries that want one (GDAL, pyogrio).

        A local container gives its own file; a remote one downloads it to a temporary folder
        (with siblings=True, every file sharing its stem too, e.g. a Shapefile's .dbf and .shx).
        """
        full = self._file(path)
        if self._real_root is not None:
            if not os.path.isfile(full):
                with self._not_found(path):
                    raise FileNotFoundError(full)
            yield full
            return
        rel = self._relative(path)
        stem = rel.rpartition(".")[0] if siblings else rel
        with tempfile.TemporaryDirectory(prefix="rayetl-") as tmp:
            wanted = [rel]
            if siblings:
                folder = rel.rpartition("/")[0]
                wanted = [
                    i.path for i in self.list(folder + "/" if folder else "") if i.path.startswith(stem + ".")
                ]
            for name in wanted or [rel]:
                self.get_file(name, os.path.join(tmp, name.rpartition("/")[2]))
            yield os.path.join(tmp, rel.rpartition("/")[2])

    def gdal_path(self, path: str) -> str:
        """Where GDAL (rasterio, pyogrio) reads `path` without downloading it; open it inside
        `rasterio.Env(**container.gdal_env())` so that remote containers get their credentials."""
        full = self._file(path)
        if self._real_root is not None:
            return full
        if self._azure_container is not None:
            # GDAL reads /vsiaz/ blobs by HTTP range requests: nothing is downloaded whole.
            return f"/vsiaz/{full}"
        raise InvalidRequest(
            f"container {self.name!r} ({self.url}) cannot be read by GDAL directly: "
            "use a local or Azure (az://) container"
        )

    def gdal_env(self) -> dict[str, str]:
        """GDAL configuration options that gdal_path() needs (credentials of remote containers)."""
        if self._azure_container is None:
            return {}
        return azure_gdal_env(self.fs, container=self.name)

    def move(self, src: str, dst: str) -> None:
        """Rename a file inside the container, replacing `dst`."""
        src_full, dst_full = self._file(src), self._file(dst)
        self._make_parent(dst_full)
        with self._not_found(src):
            self.fs.mv(src_full, dst_full)

    def _relative(self, path: str) -> str:
        """`path` normalised ('a//./b' → 'a/b') once it is known to stay in the container."""
        rel = normalize_path(path, container=self.name)
        where = f"path {path!r} in container {self.name!r}"
        if self._real_root is not None and not self._is_inside(self._join(rel)):
            raise InvalidRequest(
                f"{where} goes through a symbolic link that points outside the container: "
                "copy the file into the container instead of linking to it"
            )
        return rel

    def _file(self, path: str) -> str:
        """Filesystem path of a file; the container root itself is not one."""
        rel = self._relative(path)
        if not rel:
            raise InvalidRequest(f"empty path in container {self.name!r}: name a file")
        return self._join(rel)

    def _join(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

    def _is_inside(self, full: str) -> bool:
        real = os.path.realpath(full)
        return os.path.commonpath([real, self._real_root]) == self._real_root

    def _is_local_file(self, full: str) -> bool:
        # fsspec's local find() reports symlinks without following them; list only those that
        # lead to a file inside the container, the same ones that _relative() lets through.
        return os.path.isfile(full) and self._is_inside(full)

    def _object_info(self, full: str, entry: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            path=full.removeprefix(self._root).lstrip("/"),
            size_bytes=int(entry.get("size") or 0),
            modified=_modified(entry),
        )

    def _make_parent(self, full: str) -> None:
        # Only local folders need it: blob stores have no folders, and adlfs' makedirs would cost
        # a round trip (and the right to create containers) on every write.
        if self._real_root is not None:
            os.makedirs(full.rpartition("/")[0], exist_ok=True)

    @contextmanager
    def _staged(self, full: str) -> Iterator[str]:
        """Yield where to write `full` so that readers never see a half-written file."""
        self._make_parent(full)
        if self._real_root is None:
            # Blob stores publish an upload only when it completes (Azure commits the block list,
            # S3 completes the multipart upload), and their "move" is a copy: write in place.
            yield full
            return
        parent, _, name = full.rpartition("/")
        tmp = f"{parent}/.{name}{TMP_MARKER}{uuid.uuid4().hex}"
        try:
            yield tmp
            os.replace(tmp, full)  # atomic on one filesystem, and replaces an existing file
        except BaseException:
            with suppress(FileNotFoundError):  # the write may have failed before creating it
                os.remove(tmp)
            raise

    def _create_azure_container(self) -> None:
        """Create the Azure container of an az:// container when it is missing (no-op otherwise)."""
        if self._azure_container is None or self.fs.exists(self._azure_container):
            return
        try:
            self.fs.mkdir(self._azure_container)
        except ValueError as exc:
            # adlfs turns every failure to create a container (a bad name, a missing right) into ValueError.
            raise InvalidRequest(
                f"cannot create Azure container {self._azure_container!r} for container "
                f"{self.name!r} ({self.url}): {exc}. Create it with the Azure tools, or fix RAYETL_CONTAINERS"
            ) from exc
        logger.info("container %s: created Azure container %s", self.name, self._azure_container)

    def _require_azure_container(self) -> None:
        """NotFound when the Azure container of an az:// container does not exist."""
        if self._azure_container is not None and not self.fs.exists(self._azure_container):
            raise NotFound(self._missing_container_message())

    def _missing_container_message(self) -> str:
        account = getattr(self.fs, "account_name", None) or getattr(
            getattr(self.fs, "service_client", None), "account_name", "?"
        )
        return (
            f"Azure container {self._azure_container!r} does not exist in storage account "
            f"{account!r} (container {self.name!r} is configured as {self.url}): create it "
            f"(`rayetl storage put` creates it with the first upload, or "
            f"`az storage container create --name {self._azure_container}`), "
            "or fix RAYETL_CONTAINERS"
        )

    @contextmanager
    def _missing_azure_container(self) -> Iterator[None]:
        # A write into a missing Azure container fails with FileNotFoundError (put_file) or
        # ResourceNotFoundError (pipe_file): name the container, and keep other errors as they are.
        try:
            yield
        except (FileNotFoundError, ResourceNotFoundError) as exc:
            if self._azure_container is not None and not self.fs.exists(self._azure_container):
                raise NotFound(self._missing_container_message()) from exc
            raise

    @contextmanager
    def _not_found(self, path: str) -> Iterator[None]:
        # Only a missing file is permanent; other OSErrors stay as they are so that the engine
        # classifies them as transient and retries.
        try:
            yield
        except (FileNotFoundError, ResourceNotFoundError) as exc:
            # The round trip costs nothing on the success path: only a missing file pays it.
            self._require_azure_container()
            raise NotFound(
                f"file {path!r} not found in container {self.name!r}: "
                "check the path, or upload the file first (`rayetl storage put`)"
            ) from exc


def open_container(settings: Settings, name: str, *, create: bool = False) -> Container:
    """The container `name`: configured in settings.containers, else a local folder.

    A configured az:// container must exist on its storage account (NotFound names it when it
    does not); create=True makes a missing one, as it makes a missing local folder.
    """
    check_container_name(name)
    if name in settings.containers:
        container = _open_configured(settings, name)
        if create:
            container._create_azure_container()
        return container
    folder = settings.local_storage_root / name
    if not folder.is_dir():
        if not create:
            raise NotFound(_unknown_message(settings, name))
        folder.mkdir(parents=True, exist_ok=True)
    fs = LocalFileSystem()
    return Container(name, fs.unstrip_protocol(str(folder)), fs, str(folder))


def list_containers(settings: Settings) -> list[str]:
    """Names of the configured containers and of the local container folders, sorted."""
    names = set(settings.containers)
    root = settings.local_storage_root
    if root.is_dir():
        names |= {p.name for p in root.iterdir() if p.is_dir() and is_container_name(p.name)}
    return sorted(names)


def _open_configured(settings: Settings, name: str) -> Container:
    url = settings.containers[name].rstrip("/")
    protocol = get_protocol(url)
    options = settings.storage_options.get(protocol, {})
    if protocol in _AZURE_PROTOCOLS:
        # adlfs caches folder listings for the life of the process (exists() answers from them):
        # a long-running API would not see blobs that other processes add or delete.
        options = {"use_listings_cache": False, **options}
    try:
        fs, root = url_to_fs(url, **options)
    except (ImportError, TypeError, ValueError) as exc:
        # Unknown protocol, missing backend package or options it does not accept.
        raise InvalidRequest(
            f"container {name!r} is configured with {url!r}, which fsspec cannot open ({exc}): "
            "fix RAYETL_CONTAINERS or RAYETL_STORAGE_OPTIONS, or install the fsspec backend"
        ) from exc
    return Container(name, url, fs, root)


def _unknown_message(settings: Settings, name: str) -> str:
    known = ", ".join(list_containers(settings)) or "none yet"
    return (
        f"unknown container {name!r}. Known containers: {known}. "
        f"`rayetl storage put` creates a local container (a folder in "
        f"{settings.local_storage_root}), or configure one backed by any fsspec URL with "
        f'RAYETL_CONTAINERS, e.g. RAYETL_CONTAINERS=\'{{"{name}": "az://{name}"}}\''
    )


def _modified(entry: dict[str, Any]) -> datetime | None:
    """Modification time, from whichever key and type the backend reports it as."""
    value = next((entry[key] for key in _MODIFIED_KEYS if entry.get(key) is not None), None)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None
