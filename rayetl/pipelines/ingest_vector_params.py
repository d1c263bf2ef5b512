"""ingest_vector's parameters, and the checks made before anything is queued (and again in its tasks)."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from rayetl.errors import Conflict, InvalidRequest, NotFound
from rayetl.pipelines.containers import container_or_default
from rayetl.pipelines.contract import JobParams
from rayetl.pipelines.stac_params import CollectionId
from rayetl.pipelines.vector_formats import ConverterParams, SourceInfo, VectorFormat, infer_format, parse_crs
from rayetl.pipelines.vector_prepare import GeometryParams
from rayetl.pipelines.vector_source import check_source
from rayetl.settings import Settings
from rayetl.store import postgis
from rayetl.store.db import connect
from rayetl.store.object_names import normalize_path
from rayetl.store.objects import open_container

__all__ = [
    "FAULTS",
    "Identifier",
    "IndexParams",
    "IngestVectorParams",
    "TableParams",
    "check_target",
    "require_table",
    "inspect_source",
    "source_file",
]

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_IDENTIFIER_RULE = "lower-case letters, digits and '_', starting with a letter or '_', at most 63 characters"


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a valid name: use {_IDENTIFIER_RULE}")
    if value.startswith(postgis.STAGING_PREFIX):
        raise ValueError(f"names starting with {postgis.STAGING_PREFIX!r} are rayetl's staging tables")
    return value


# A schema or table name rayetl creates: no quoting needed, never a staging table's name.
Identifier = Annotated[str, AfterValidator(_check_identifier)]
# Test only: faults injected on a task's first attempt, to prove chunks are written exactly once.
FAULTS = ("crash_prepare_after_first_chunk", "crash_upload_before_commit", "crash_upload_after_commit")


class IndexParams(JobParams):
    """Indexes built after the load, before the table is published."""

    spatial: bool = Field(True, description="GIST index on the geometry.")
    attributes: list[str] = Field(default_factory=list, description="Columns to index with a B-tree.")
    temporal: list[str] = Field(
        default_factory=list,
        description="Date/time columns to index; the first one gives the STAC item's time range.",
    )


class IngestVectorParams(JobParams):
    """Parameters of ingest_vector."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    blob_name: str = Field(
        ..., min_length=1, max_length=1024, description="Path of the file in its container."
    )
    container_name: str | None = Field(
        None, validate_default=True, description="Container of the file (default: the configured one)."
    )
    file_extension: str | None = Field(
        None, description="Format, when the name's extension is missing or wrong (csv, geojson, gpkg, ...)."
    )
    table_name: Identifier = Field(..., description=f"Target table: {_IDENTIFIER_RULE}.")
    schema_name: Identifier = Field("geo", alias="schema", description=f"Target schema: {_IDENTIFIER_RULE}.")
    chunk_size: int | None = Field(
        None, ge=100, le=2_000_000, description="Features per chunk (default: chosen from the file)."
    )
    converter_params: ConverterParams = Field(default_factory=ConverterParams)
    source_crs: str | None = Field(None, description="CRS of a file that declares none, e.g. 'EPSG:2263'.")
    indexes: IndexParams = Field(default_factory=IndexParams)
    geometry_params: GeometryParams = Field(default_factory=GeometryParams)
    if_exists: Literal["fail", "replace", "append"] = Field(
        "fail", description="When the table exists: fail, replace it atomically, or append to it."
    )
    collection_id: CollectionId = Field("system-vectors", description="STAC collection of the table's item.")
    inject_faults: list[Literal[FAULTS]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="Test only: crash a task's first attempt at a chosen point."
    )

    _default_container = field_validator("container_name", mode="before")(container_or_default)

    @field_validator("blob_name")
    @classmethod
    def _check_blob(cls, value: str) -> str:
        try:
            return normalize_path(value)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None

    @field_validator("source_crs")
    @classmethod
    def _check_crs(cls, value: str | None) -> str | None:
        if value is not None:
            parse_crs(value, "source_crs")
        return value

    @model_validator(mode="after")
    def _check_format(self) -> "IngestVectorParams":
        try:
            infer_format(self.blob_name, self.file_extension)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def format(self) -> VectorFormat:
        """The source's format."""
        return infer_format(self.blob_name, self.file_extension)

    @property
    def target(self) -> postgis.Table:
        """The table the job publishes."""
        return postgis.Table(self.schema_name, self.table_name)


class TableParams(JobParams):
    """A published table, named by schema and table."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    table_name: Identifier = Field(..., description="The table.")
    schema_name: Identifier = Field("geo", alias="schema", description="Its schema.")
    collection_id: CollectionId = Field("system-vectors", description="STAC collection of the table's item.")

    @property
    def target(self) -> postgis.Table:
        """The table."""
        return postgis.Table(self.schema_name, self.table_name)


def require_table(params: TableParams, settings: Settings) -> None:
    """NotFound when the table does not exist."""
    with connect(settings) as conn:
        exists = postgis.table_exists(conn, params.schema_name, params.table_name)
    if not exists:
        raise NotFound(f"table {params.target} does not exist; check schema and table_name")


@contextmanager
def source_file(params: IngestVectorParams, settings: Settings) -> Iterator[str]:
    """A local path of the source (a remote file is downloaded); NotFound names container and blob."""
    container = open_container(settings, params.container_name)
    info = container.info(params.blob_name)  # NotFound naming both
    if info.size_bytes > settings.max_source_bytes:
        raise InvalidRequest(
            f"{params.blob_name!r} is {info.size_bytes:,} bytes, over the limit of "
            f"{settings.max_source_bytes:,} (RAYETL_MAX_SOURCE_BYTES); split the file or raise the limit"
        )
    with container.local_path(params.blob_name, siblings=params.format is VectorFormat.SHP) as path:
        yield path


def inspect_source(path: str, params: IngestVectorParams, settings: Settings) -> SourceInfo:
    """check_source plus the limit on a zip's or KMZ's decompressed size."""
    info = check_source(
        path,
        params.format,
        params.converter_params,
        source_crs=params.source_crs,
        source_name=params.blob_name,
    )
    unzipped = info.uncompressed_size_bytes
    if unzipped is not None and unzipped > settings.max_uncompressed_bytes:
        raise InvalidRequest(
            f"{params.blob_name!r} decompresses to {unzipped:,} bytes, over the limit of "
            f"{settings.max_uncompressed_bytes:,} (RAYETL_MAX_UNCOMPRESSED_BYTES)"
        )
    return info


def check_target(params: IngestVectorParams, settings: Settings) -> None:
    """Conflict when the target exists and if_exists is fail."""
    if params.if_exists != "fail":
        return
    with connect(settings) as conn:
        exists = postgis.table_exists(conn, params.schema_name, params.table_name)
    if exists:
        raise Conflict(
            f"table {params.target} already exists; submit again with if_exists='replace' to replace it "
            "or if_exists='append' to add the rows to it"
        )


def preflight(params: IngestVectorParams, settings: Settings) -> None:
    """Everything that can be known at submission: target, container, blob, size, format, layer, CRS."""
    check_target(params, settings)
    with source_file(params, settings) as path:
        inspect_source(path, params, settings)
