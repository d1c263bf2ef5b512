"""Configuration: one pydantic settings model read from RAYETL_* environment variables."""

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every knob of rayetl; the README lists them with their defaults."""

    model_config = SettingsConfigDict(env_prefix="RAYETL_", extra="ignore", frozen=True)

    home: Path = Field(
        Path(".rayetl"),
        description="State folder of the local stack: private PostGIS, storage, logs, pid files.",
    )
    database_url: SecretStr | None = Field(
        None, description="PostgreSQL URL. Unset: the CLI starts a private PostGIS under `home`."
    )
    storage_root: Path | None = Field(
        None,
        description="Folder whose sub-folders are the local containers (default: home/storage).",
    )
    containers: dict[str, str] = Field(
        default_factory=dict,
        description='Containers backed by any fsspec URL, as JSON: {"bronze": "az://bronze"}.',
    )
    storage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='fsspec options per protocol, as JSON: {"az": {"connection_string": "..."}}.',
    )
    default_container: str = Field("bronze", description="Container used when a job names none.")
    default_output_container: str = Field(
        "silver", description="Container raster jobs write their COGs to when a job names none."
    )

    api_host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    api_port: int = Field(8000, description="Port of the HTTP API.")
    api_token: SecretStr | None = Field(
        None, description="When set, every API call but /api/health needs `Authorization: Bearer`."
    )
    public_url: str | None = Field(
        None,
        description="Base URL people reach the API at, used in job results (default: http://api_host:api_port).",
    )
    data_schemas: list[str] = Field(
        default_factory=lambda: ["geo"],
        description='Database schemas whose tables /features serves, as JSON: ["geo"].',
    )
    max_source_bytes: int = Field(
        2 * 1024**3, gt=0, description="Largest vector source file a job accepts (bytes)."
    )
    max_uncompressed_bytes: int = Field(
        8 * 1024**3, gt=0, description="Largest decompressed size of a zip or KMZ source (bytes)."
    )
    dashboard_port: int = Field(8265, description="Port of the Ray dashboard started by `up`.")
    ray_address: str | None = Field(
        None, description="Ray cluster to join; unset: the one `rayetl up` started, else a new one."
    )
    ray_namespace: str = Field("rayetl", description="Ray namespace of the named actors.")

    task_max_attempts: int = Field(4, ge=1, description="Attempts of a transiently failing task.")
    retry_backoff_s: float = Field(0.5, gt=0, description="First retry delay; doubles each retry.")
    retry_backoff_max_s: float = Field(30.0, gt=0, description="Cap of the retry delay.")
    max_tasks_in_flight: int = Field(2000, ge=1, description="Tasks a job keeps submitted at once.")
    progress_flush_s: float = Field(0.5, gt=0, description="How often progress reaches Postgres.")

    janitor_interval_s: float = Field(15.0, gt=0, description="How often the janitor looks.")
    janitor_stale_after_s: float = Field(
        60.0,
        gt=0,
        description="A job whose coordinator is gone and that has not moved for this long is resumed.",
    )
    janitor_max_resumes: int = Field(3, ge=0, description="Resumes of one attempt before failing it.")

    @property
    def base_url(self) -> str:
        """Where the API answers, without a trailing slash."""
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def local_storage_root(self) -> Path:
        """Folder holding the local containers."""
        return (self.storage_root or self.home / "storage").absolute()
