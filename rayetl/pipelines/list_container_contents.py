"""list_container_contents: list a container, then read each file's metadata in parallel."""

import mimetypes
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from rayetl.pipelines.containers import (
    ContainerListingParams,
    describe_listing,
    list_files,
    plan_listing,
    require_container,
)
from rayetl.pipelines.contract import JobType, Stage, StageOutputs, TaskSpec, current_task
from rayetl.store.objects import open_container

__all__ = ["LIST_CONTAINER_CONTENTS", "FileMetadata", "ListContainerResult", "detect_format"]

# Leading bytes of the formats this platform reads; the extension alone can lie.
_MAGIC = (
    (b"II*\x00", "GeoTIFF/TIFF"),
    (b"MM\x00*", "GeoTIFF/TIFF"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
    (b"SQLite format 3\x00", "SQLite/GeoPackage"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x00\x00\x27\x0a", "ESRI Shapefile"),
    (b"fgb\x03", "FlatGeobuf"),
    (b"PAR1", "Parquet"),
    (b"\x89HDF", "HDF5/NetCDF4"),
    (b"CDF\x01", "NetCDF"),
)


class FileMetadata(BaseModel):
    """What one metadata task learns about a file."""

    path: str
    size_bytes: int
    modified: str | None
    extension: str
    media_type: str | None
    detected_format: str


class ListContainerResult(BaseModel):
    """What a finished list_container_contents reports."""

    container: str
    prefix: str
    file_count: int
    total_bytes: int
    message: str
    files: list[FileMetadata]


def detect_format(head: bytes) -> str:
    """Name the format from the first bytes of a file."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    text = head.lstrip()
    if text.startswith(b"{") or text.startswith(b"["):
        return "JSON"
    if text.startswith(b"<"):
        return "XML"
    if not head:
        return "empty"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text"


def read_file_metadata(entry: dict[str, Any], container_name: str) -> FileMetadata:
    """Sniff one file (its first bytes only) and describe it."""
    container = open_container(current_task().settings, container_name)
    with container.open(entry["path"], "rb") as handle:
        head = handle.read(64)
    name = entry["path"].rsplit("/", 1)[-1]
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return FileMetadata(
        path=entry["path"],
        size_bytes=entry["size_bytes"],
        modified=entry.get("modified"),
        extension=extension,
        media_type=mimetypes.guess_type(name)[0],
        detected_format=detect_format(head),
    )


def plan_metadata(params: ContainerListingParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One metadata task per listed file."""
    (listing,) = outputs["list"].values()
    return [TaskSpec(key=f"file-{i}", args=(entry, params.container_name)) for i, entry in enumerate(listing)]


def summarize_listing(
    params: ContainerListingParams, outputs: Mapping[str, StageOutputs]
) -> ListContainerResult:
    """Collect the metadata; no matching file is a valid, stated outcome."""
    files = outputs["metadata"].values() if "metadata" in outputs else []
    message = describe_listing(params, len(files))
    return ListContainerResult(
        container=params.container_name,
        prefix=params.prefix,
        file_count=len(files),
        total_bytes=sum(f.size_bytes for f in files),
        message=message,
        files=files,
    )


LIST_CONTAINER_CONTENTS = JobType(
    name="list_container_contents",
    description="Lists a container (prefix, extensions, limit) and reads each file's metadata.",
    params=ContainerListingParams,
    preflight=require_container,
    stages=(
        Stage("list", plan=plan_listing, run=list_files, durable=True, description="list files"),
        Stage(
            "metadata",
            plan=plan_metadata,
            run=read_file_metadata,
            empty_ok=True,
            num_cpus=0.25,
            description="one metadata task per file",
        ),
    ),
    finalize=summarize_listing,
)
