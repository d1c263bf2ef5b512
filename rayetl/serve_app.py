"""HTTP API on Ray Serve: parse the request, call actors/ or store/, map errors to status codes."""

import logging
from typing import Annotated, Any, Generic, TypeVar

import ray
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool
from pydantic import BaseModel
from ray import serve

from rayetl import __version__
from rayetl.actors import submission
from rayetl.actors.host import ensure_host
from rayetl.actors.janitor import ensure_janitor
from rayetl.errors import Conflict, InvalidRequest, NotFound, RayetlError, Unauthorized
from rayetl.features import add_features
from rayetl.logs import configure_service_logging
from rayetl.models import EventRecord, JobRecord, JobStatus, TaskRecord, TaskStatus
from rayetl.pipelines import JOB_TYPES, get_job_type
from rayetl.settings import Settings
from rayetl.store import audit
from rayetl.store.db import open_pool
from rayetl.store.objects import list_containers

__all__ = ["RayetlApi", "build_app", "create_app"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_STATUS_OF = {InvalidRequest: 422, NotFound: 404, Conflict: 409, Unauthorized: 401}


class JobResponse(JobRecord):
    """A job with its task counts and links."""

    task_counts: dict[str, int]
    links: dict[str, str]


class SubmitResponse(BaseModel):
    """Answer to a submission: 202 for a new job or attempt, 200 when it already existed."""

    job_id: str
    job_type: str
    status: JobStatus
    attempt: int
    idempotent: bool
    result: dict[str, Any] | None
    error: str | None
    links: dict[str, str]


class Page(BaseModel, Generic[T]):
    """One page of a longer list."""

    items: list[T]
    total: int
    limit: int
    offset: int


class JobTypeInfo(BaseModel):
    """A job type and the JSON schema of its parameters."""

    name: str
    description: str
    stages: list[str]
    params_schema: dict[str, Any]


def _links(job_id: str) -> dict[str, str]:
    base = f"/api/jobs/{job_id}"
    return {"self": base, "tasks": f"{base}/tasks", "events": f"{base}/events"}


def _error_body(exc: RayetlError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, InvalidRequest) and exc.fields:
        body["fields"] = exc.fields
    return body


def add_exception_handlers(app: FastAPI) -> None:
    """Map rayetl's errors (and FastAPI's own validation) to JSON with a message."""

    @app.exception_handler(RayetlError)
    async def _rayetl_error(request: Request, exc: RayetlError) -> JSONResponse:
        status = next((code for kind, code in _STATUS_OF.items() if isinstance(exc, kind)), 500)
        if status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        return JSONResponse(_error_body(exc), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in exc.errors()
        ]
        listed = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        message = f"invalid request: {listed}"
        return JSONResponse(
            {"error": "InvalidRequest", "message": message, "fields": fields}, status_code=422
        )


def _job_response(pool: ConnectionPool, job: JobRecord) -> JobResponse:
    with pool.connection() as conn:
        counts = audit.count_tasks_by_status(conn, job.id)
    return JobResponse(**job.model_dump(), task_counts=counts, links=_links(job.id))


def _job_type_info(jt) -> JobTypeInfo:
    return JobTypeInfo(
        name=jt.name,
        description=jt.description,
        stages=jt.stage_names,
        params_schema=jt.params.model_json_schema(),
    )


def _token_check(settings: Settings):
    """A dependency that enforces RAYETL_API_TOKEN when it is set."""
    bearer = HTTPBearer(auto_error=False)

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        expected = settings.api_token
        if expected is None:
            return
        if credentials is None or credentials.credentials != expected.get_secret_value():
            raise Unauthorized(
                "missing or wrong API token: send the header 'Authorization: Bearer <RAYETL_API_TOKEN>'"
            )

    return require_token


def _job_command_routes(settings: Settings, pool: ConnectionPool) -> APIRouter:
    """Routes that change jobs: submit, cancel, retry."""
    router = APIRouter()

    @router.post("/jobs/{job_type}", status_code=202, response_model=SubmitResponse)
    def submit(
        job_type: str,
        params: Annotated[dict[str, Any] | None, Body(description="The job's parameters")] = None,
    ) -> JSONResponse:
        """Submit a job; the same type and params always give the same job id."""
        done = submission.submit_job(job_type, params or {}, settings=settings, pool=pool)
        job = done.job
        body = SubmitResponse(
            job_id=job.id,
            job_type=job.job_type,
            status=job.status,
            attempt=job.attempt,
            idempotent=done.idempotent,
            result=job.result,
            error=job.error,
            links=_links(job.id),
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if done.idempotent else 202)

    @router.post("/jobs/{job_id}/cancel", response_model=JobResponse)
    def cancel(job_id: str) -> JobResponse:
        """Cancel a queued or running job."""
        return _job_response(pool, submission.cancel_job(job_id, settings=settings, pool=pool))

    @router.post("/jobs/{job_id}/retry", status_code=202, response_model=JobResponse)
    def retry(job_id: str) -> JobResponse:
        """Run a failed or cancelled job again from the stage where it stopped."""
        return _job_response(pool, submission.retry_job(job_id, settings=settings, pool=pool))

    return router


def _job_read_routes(pool: ConnectionPool) -> APIRouter:
    """Routes that read jobs, their tasks and their events."""
    router = APIRouter()

    def existing_job(job_id: str) -> JobRecord:
        with pool.connection() as conn:
            job = audit.get_job(conn, job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r} (GET /api/jobs lists the jobs)")
        return job

    @router.get("/jobs", response_model=Page[JobRecord])
    def list_jobs(
        status: JobStatus | None = None,
        job_type: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Page[JobRecord]:
        """Jobs, newest first."""
        with pool.connection() as conn:
            items = audit.list_jobs(conn, status=status, job_type=job_type, limit=limit, offset=offset)
            total = audit.count_jobs(conn, status=status, job_type=job_type)
        return Page[JobRecord](items=items, total=total, limit=limit, offset=offset)

    @router.get("/jobs/{job_id}", response_model=JobResponse)
    def get_job(job_id: str) -> JobResponse:
        """One job: status, stage progress, result or error."""
        return _job_response(pool, existing_job(job_id))

    @router.get("/jobs/{job_id}/tasks", response_model=Page[TaskRecord])
    def list_tasks(
        job_id: str,
        stage: str | None = None,
        status: TaskStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Page[TaskRecord]:
        """Tasks of a job, in plan order."""
        existing_job(job_id)
        with pool.connection() as conn:
            items = audit.list_tasks(conn, job_id, stage=stage, status=status, limit=limit, offset=offset)
            total = audit.count_tasks(conn, job_id, stage=stage, status=status)
        return Page[TaskRecord](items=items, total=total, limit=limit, offset=offset)

    @router.get("/jobs/{job_id}/events", response_model=Page[EventRecord])
    def list_events(
        job_id: str,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Page[EventRecord]:
        """The job's event log, oldest first."""
        existing_job(job_id)
        with pool.connection() as conn:
            items = audit.list_events(conn, job_id, limit=limit, offset=offset)
        return Page[EventRecord](items=items, total=offset + len(items), limit=limit, offset=offset)

    return router


def _job_type_routes() -> APIRouter:
    """Routes that describe the job types."""
    router = APIRouter()

    @router.get("/job-types", response_model=list[JobTypeInfo])
    def job_types() -> list[JobTypeInfo]:
        """Every job type with the JSON schema of its parameters."""
        return [_job_type_info(jt) for jt in JOB_TYPES.values()]

    @router.get("/job-types/{name}", response_model=JobTypeInfo)
    def job_type(name: str) -> JobTypeInfo:
        """One job type with the JSON schema of its parameters."""
        return _job_type_info(get_job_type(name))

    return router


def _health_routes(settings: Settings, pool: ConnectionPool) -> APIRouter:
    """The health check, open even when a token is required."""
    router = APIRouter()

    @router.get("/health")
    def health() -> JSONResponse:
        """Database, Ray and storage, each 'ok' or what is wrong; 503 unless all are ok."""

        def ping_database() -> None:
            with pool.connection() as conn:
                conn.execute("SELECT 1")

        checks = {"database": _check(ping_database)}
        checks["ray"] = _check(lambda: ray.cluster_resources())
        checks["storage"] = _check(lambda: list_containers(settings))
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", **checks}, status_code=200 if healthy else 503
        )

    return router


def create_app(settings: Settings, pool: ConnectionPool) -> FastAPI:
    """The FastAPI application; Serve wraps it, tests may build it with their own settings."""
    app = FastAPI(
        title="rayetl",
        version=__version__,
        description="Geospatial ETL on Ray: submit jobs, follow their stages and tasks.",
    )
    add_exception_handlers(app)
    protected = [Depends(_token_check(settings))]
    app.include_router(_job_command_routes(settings, pool), prefix="/api", dependencies=protected)
    app.include_router(_job_read_routes(pool), prefix="/api", dependencies=protected)
    app.include_router(_job_type_routes(), prefix="/api", dependencies=protected)
    app.include_router(_health_routes(settings, pool), prefix="/api")
    add_features(app, settings, dependencies=protected)
    return app


def _check(probe) -> str:
    try:
        probe()
    except Exception as exc:  # a health check reports any failure instead of raising it
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"


@serve.deployment(name="rayetl-api", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200)
@serve.ingress()
class RayetlApi:
    """The Serve deployment: one database pool per replica, the app built on the replica."""

    def __init__(self, settings: Settings):
        configure_service_logging()
        self._settings = settings
        self._pool = open_pool(settings, min_size=1, max_size=10)
        ensure_janitor(settings)
        ensure_host(settings)  # so the first job finds a coordinator started ahead of it

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._settings, self._pool)


def build_app(args: dict[str, str] | None = None) -> serve.Application:
    """Entry point for `serve run rayetl.serve_app:build_app`: settings come from RAYETL_* variables."""
    return RayetlApi.bind(Settings(**(args or {})))
