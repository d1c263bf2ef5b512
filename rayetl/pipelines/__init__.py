"""Job definitions and the registry of job types (an explicit, read-only mapping)."""

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from rayetl.errors import NotFound
from rayetl.pipelines.contract import JobContractError, JobType
from rayetl.pipelines.hello_world import HELLO_WORLD
from rayetl.pipelines.ingest_vector import INGEST_VECTOR
from rayetl.pipelines.list_container_contents import LIST_CONTAINER_CONTENTS
from rayetl.pipelines.process_raster import PROCESS_RASTER
from rayetl.pipelines.stac_catalog_container import STAC_CATALOG_CONTAINER
from rayetl.pipelines.stac_catalog_vectors import STAC_CATALOG_VECTORS
from rayetl.pipelines.summarize_container import SUMMARIZE_CONTAINER
from rayetl.pipelines.unpublish_raster import UNPUBLISH_RASTER
from rayetl.pipelines.unpublish_vector import UNPUBLISH_VECTOR
from rayetl.pipelines.validate_raster import VALIDATE_RASTER

__all__ = ["JOB_TYPES", "build_registry", "get_job_type"]


def build_registry(job_types: Iterable[JobType]) -> Mapping[str, JobType]:
    """A read-only name → job type mapping that refuses duplicate names."""
    registry: dict[str, JobType] = {}
    for job_type in job_types:
        if job_type.name in registry:
            raise JobContractError(f"job type {job_type.name!r} is registered twice")
        registry[job_type.name] = job_type
    return MappingProxyType(registry)


JOB_TYPES = build_registry(
    [
        HELLO_WORLD,
        LIST_CONTAINER_CONTENTS,
        SUMMARIZE_CONTAINER,
        INGEST_VECTOR,
        STAC_CATALOG_VECTORS,
        STAC_CATALOG_CONTAINER,
        UNPUBLISH_VECTOR,
        VALIDATE_RASTER,
        PROCESS_RASTER,
        UNPUBLISH_RASTER,
    ]
)


def get_job_type(name: str) -> JobType:
    """The job type called name, or NotFound listing the known ones."""
    try:
        return JOB_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(JOB_TYPES))
        raise NotFound(
            f"unknown job type {name!r}. Known types: {known} "
            "(GET /api/job-types lists them with their parameters)"
        ) from None
