"""Shared pieces of the container jobs: parameters, the listing stage and its preflight."""

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from rayetl.errors import InvalidRequest
from rayetl.pipelines.contract import JobParams, StageOutputs, TaskSpec, current_task
from rayetl.settings import Settings
from rayetl.store.object_names import normalize_path
from rayetl.store.objects import open_container

__all__ = [
    "ContainerListingParams",
    "ContainerPrefix",
    "container_or_default",
    "list_files",
    "plan_listing",
    "require_container",
]


def _check_path(value: str) -> str:
    try:
        normalize_path(value)
    except InvalidRequest as exc:
        raise ValueError(str(exc)) from None
    return value


# A path inside a container: checked at submission with the same rule the storage layer applies.
ContainerPrefix = Annotated[str, AfterValidator(_check_path)]


def _configured_default(setting: str) -> Callable[[type, Any, ValidationInfo], Any]:
    """A field validator that turns None into the container the settings name `setting`."""

    def validate(cls: type, value: Any, info: ValidationInfo) -> Any:
        settings = (info.context or {}).get("settings")
        if value is None and settings is not None:
            return getattr(settings, setting)
        if value is None:
            raise ValueError(f"{info.field_name} is required")
        return value

    return validate


# `container_name` (input) and `output_container` validators: None becomes the configured one.
container_or_default = _configured_default("default_container")
output_container_or_default = _configured_default("default_output_container")


class ContainerListingParams(JobParams):
    """Which files of a container a job looks at."""

    container_name: str | None = Field(
        None, validate_default=True, description="Container to list (default: the configured one)."
    )
    prefix: ContainerPrefix = Field("", max_length=1024, description="Only paths starting with this.")
    extensions: list[str] = Field(
        default_factory=list, description="Only these extensions (case-insensitive, no dot needed)."
    )
    limit: int = Field(1000, ge=1, le=100_000, description="At most this many files.")

    _default_container = field_validator("container_name", mode="before")(container_or_default)

    @field_validator("extensions")
    @classmethod
    def _normalize_extensions(cls, value: list[str]) -> list[str]:
        cleaned = sorted({ext.lower().lstrip(".") for ext in value})
        for ext in cleaned:
            if not re.fullmatch(r"[a-z0-9_.-]{1,16}", ext):
                raise ValueError(
                    f"extension {ext!r} is not a file extension (letters and digits, e.g. 'tif')"
                )
        return cleaned


def describe_listing(params: ContainerListingParams, file_count: int) -> str:
    """The result's message: how many files matched where, or that none did."""
    where = f"container {params.container_name!r}" + (f" under {params.prefix!r}" if params.prefix else "")
    return f"{file_count} files in {where}" if file_count else f"no files matched in {where}"


def require_container(params: ContainerListingParams, settings: Settings) -> None:
    """Preflight: the container must exist (NotFound otherwise)."""
    open_container(settings, params.container_name)


def plan_listing(params: ContainerListingParams, outputs: Mapping[str, StageOutputs]) -> list[TaskSpec]:
    """One task lists the container."""
    return [TaskSpec(key="list", args=(params,))]


def list_files(params: ContainerListingParams) -> list[dict[str, Any]]:
    """List the matching files as plain dicts (kept durable in the audit trail)."""
    container = open_container(current_task().settings, params.container_name)
    found = container.list(params.prefix, extensions=params.extensions or None, limit=params.limit)
    return [info.model_dump(mode="json") for info in found]
