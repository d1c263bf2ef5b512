"""The `rayetl` command: the local stack, storage, and jobs (through the API, or `run` on Ray)."""

import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rayetl.client import ApiClient
from rayetl.errors import RayetlError
from rayetl.settings import Settings

app = typer.Typer(help="Geospatial ETL on Ray.", no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
dev_db_app = typer.Typer(help="The private local PostGIS.", no_args_is_help=True)
storage_app = typer.Typer(help="Copy files into and out of containers (any backend).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(dev_db_app, name="dev-db")
app.add_typer(storage_app, name="storage")

console = Console()
# Messages are never wrapped: a wrapped path or URL cannot be copied, nor grepped in a log.
err_console = Console(stderr=True, soft_wrap=True)

ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="A parameter as key=value; values are read as JSON if they parse."),
]
ParamsFile = Annotated[Path | None, typer.Option("--params-file", help="A JSON file of parameters.")]


def parse_params(pairs: list[str] | None, params_file: Path | None) -> dict[str, Any]:
    """Merge a params file and key=value pairs (values parsed as JSON when they are JSON)."""
    params: dict[str, Any] = json.loads(params_file.read_text()) if params_file else {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value (e.g. -p n=10)")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _print_json(value: Any) -> None:
    console.print_json(json.dumps(value, default=str))


def _half_a_second() -> None:
    time.sleep(0.5)


def follow(
    get_job: Callable[[], dict[str, Any]], *, pause: Callable[[], object] = _half_a_second
) -> dict[str, Any]:
    """Show one progress bar per stage until the job ends; returns the final job.

    pause: waits before the bars are redrawn (it may return early, e.g. when a job ends).
    """
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        bars: dict[str, Any] = {}
        while True:
            job = get_job()
            for stage, counters in job["stage_progress"].items():
                if stage not in bars:
                    bars[stage] = progress.add_task(stage, total=counters["total"] or None)
                progress.update(bars[stage], total=counters["total"] or 1, completed=counters["completed"])
            if job["status"] in ("completed", "failed", "cancelled", "timeout"):
                return job
            pause()


def _exit_for(job: dict[str, Any]) -> None:
    if job["status"] != "completed":
        err_console.print(f"[red]job {job['status']}[/red]: {job.get('error') or ''}")
        raise typer.Exit(1)


# -- local stack -----------------------------------------------------------------------------


@app.command()
def up() -> None:
    """Start the local stack (private PostGIS unless a database URL is set, Ray head, API)."""
    from rayetl.stack import up as stack_up

    info = stack_up(Settings())
    console.print(f"API:           {info.api_url}")
    console.print(f"API docs:      {info.docs_url}")
    console.print(f"Ray dashboard: {info.dashboard_url}")
    console.print(f"Ray address:   {info.ray_address}")
    console.print(f"Database:      {info.database}")


@app.command()
def down() -> None:
    """Stop exactly what `rayetl up` started."""
    from rayetl.stack import down as stack_down

    stopped = stack_down(Settings())
    console.print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or update the audit schema and pgstac."""
    from rayetl.stack import ensure_database
    from rayetl.store.migrate import upgrade

    _print_json(upgrade(ensure_database(Settings())))


@dev_db_app.command("start")
def dev_db_start() -> None:
    """Start the private PostGIS and print its URL."""
    from rayetl.stack import dev_database

    console.print(dev_database(Settings()).start())


@dev_db_app.command("stop")
def dev_db_stop() -> None:
    """Stop the private PostGIS."""
    from rayetl.stack import dev_database

    dev_database(Settings()).stop()


@dev_db_app.command("url")
def dev_db_url() -> None:
    """Print the URL of the private PostGIS."""
    from rayetl.stack import dev_database

    console.print(dev_database(Settings()).url())


# -- storage ---------------------------------------------------------------------------------


def _split_target(target: str) -> tuple[str, str]:
    container, _, path = target.partition("/")
    return container, path


@storage_app.command("ls")
def storage_ls(target: Annotated[str, typer.Argument(help="CONTAINER or CONTAINER/PREFIX")]) -> None:
    """List the files of a container."""
    from rayetl.store.objects import open_container

    name, prefix = _split_target(target)
    table = Table("path", "bytes", "modified")
    for info in open_container(Settings(), name).list(prefix):
        table.add_row(info.path, str(info.size_bytes), str(info.modified or ""))
    console.print(table)


@storage_app.command("put")
def storage_put(
    local: Annotated[Path, typer.Argument(help="Local file")],
    target: Annotated[str, typer.Argument(help="CONTAINER/PATH")],
) -> None:
    """Copy a local file into a container (a local container is created if missing)."""
    from rayetl.store.object_names import normalize_path
    from rayetl.store.objects import open_container

    name, path = _split_target(target)
    path = normalize_path(path or local.name, container=name)  # refuse a bad path before creating anything
    info = open_container(Settings(), name, create=True).put_file(local, path)
    console.print(f"{name}/{info.path} ({info.size_bytes} bytes)")


@storage_app.command("sample")
def storage_sample(
    target: Annotated[str, typer.Argument(help="CONTAINER/PATH.geojson")] = "bronze/demo/stations.geojson",
) -> None:
    """Write a generated sample GeoJSON (2,000 seeded points over Europe) into a container."""
    import tempfile

    from rayetl.sample_data import write_sample_points
    from rayetl.store.object_names import normalize_path
    from rayetl.store.objects import open_container

    name, path = _split_target(target)
    path = normalize_path(path, container=name)
    with tempfile.TemporaryDirectory() as tmp:
        local = write_sample_points(Path(tmp) / "sample.geojson")
        info = open_container(Settings(), name, create=True).put_file(local, path)
    console.print(f"{name}/{info.path} ({info.size_bytes} bytes)")


@storage_app.command("get")
def storage_get(
    source: Annotated[str, typer.Argument(help="CONTAINER/PATH")],
    local: Annotated[Path, typer.Argument(help="Local file")],
) -> None:
    """Copy a file out of a container."""
    from rayetl.store.objects import open_container

    name, path = _split_target(source)
    open_container(Settings(), name).get_file(path, local)
    console.print(str(local))


# -- jobs through the API --------------------------------------------------------------------


@app.command()
def submit(
    job_type: str,
    param: ParamOption = None,
    params_file: ParamsFile = None,
    wait: Annotated[bool, typer.Option(help="Follow the job with a progress bar per stage.")] = False,
) -> None:
    """Submit a job through the API."""
    client = ApiClient(Settings())
    answer = client.post(f"/api/jobs/{job_type}", parse_params(param, params_file))
    console.print(
        f"job {answer['job_id']} {answer['status']}"
        + (" (already submitted)" if answer["idempotent"] else "")
    )
    if wait:
        job = follow(lambda: client.get(f"/api/jobs/{answer['job_id']}"))
        _print_json({"status": job["status"], "result": job["result"], "error": job["error"]})
        _exit_for(job)


@app.command()
def status(job_id: str) -> None:
    """Show a job."""
    _print_json(ApiClient(Settings()).get(f"/api/jobs/{job_id}"))


@app.command()
def jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
    job_type: Annotated[str | None, typer.Option("--type", help="Only jobs of this type.")] = None,
    limit: int = 20,
) -> None:
    """List jobs, newest first."""
    page = ApiClient(Settings()).get("/api/jobs", status=status, job_type=job_type, limit=limit)
    table = Table("id", "type", "status", "stage", "created")
    for job in page["items"]:
        table.add_row(
            job["id"][:12], job["job_type"], job["status"], job["current_stage"] or "", job["created_at"]
        )
    console.print(table)
    console.print(f"{len(page['items'])} of {page['total']}")


@app.command()
def tasks(
    job_id: str,
    stage: Annotated[str | None, typer.Option(help="Only this stage.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    limit: int = 50,
) -> None:
    """List the tasks of a job."""
    page = ApiClient(Settings()).get(f"/api/jobs/{job_id}/tasks", stage=stage, status=status, limit=limit)
    table = Table("stage", "key", "status", "attempt", "duration_s", "error")
    for task in page["items"]:
        duration = f"{task['duration_s']:.3f}" if task["duration_s"] is not None else ""
        table.add_row(
            task["stage"],
            task["task_key"],
            task["status"],
            str(task["attempt"]),
            duration,
            task["error"] or "",
        )
    console.print(table)
    console.print(f"{len(page['items'])} of {page['total']}")


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    job = ApiClient(Settings()).post(f"/api/jobs/{job_id}/cancel")
    console.print(f"job {job['id']} {job['status']}")


@app.command()
def retry(job_id: str) -> None:
    """Run a failed or cancelled job again from where it stopped."""
    job = ApiClient(Settings()).post(f"/api/jobs/{job_id}/retry")
    console.print(f"job {job['id']} {job['status']} (attempt {job['attempt']})")


@app.command("job-types")
def job_types() -> None:
    """List the job types and their stages."""
    for info in ApiClient(Settings()).get("/api/job-types"):
        console.print(f"[bold]{info['name']}[/bold] ({' → '.join(info['stages'])}): {info['description']}")


# -- run on the current Ray cluster ----------------------------------------------------------


@app.command()
def run(
    job_type: str,
    param: ParamOption = None,
    params_file: ParamsFile = None,
    timeout_s: Annotated[float, typer.Option(help="Give up waiting after this long.")] = 24 * 3600,
) -> None:
    """Run a job on the current Ray cluster and wait for it; exit code 0 only on success.

    This is the entry point of `ray job submit -- rayetl run ...`.
    """
    from rayetl.actors import submission
    from rayetl.actors.janitor import ensure_janitor
    from rayetl.actors.runtime import connect_ray
    from rayetl.stack import ensure_database
    from rayetl.store import audit
    from rayetl.store.db import open_pool
    from rayetl.store.migrate import upgrade

    settings = ensure_database(Settings())
    upgrade(settings)
    connect_ray(settings)
    ensure_janitor(settings)
    with open_pool(settings) as pool:
        done = submission.submit_job(job_type, parse_params(param, params_file), settings=settings, pool=pool)
        console.print(
            f"job {done.job.id} {done.job.status.value}" + (" (already submitted)" if done.idempotent else "")
        )

        deadline = time.monotonic() + timeout_s
        # One connection reads the job and hears of its end: the bars are redrawn twice a second,
        # and at once when a job ends, so the command returns as the job does.
        with pool.connection() as conn, audit.job_ends(conn) as wait_for_an_end:

            def job_until_deadline() -> dict[str, Any]:
                with conn.transaction():
                    job = audit.get_job(conn, done.job.id).model_dump(mode="json")
                if time.monotonic() < deadline or job["status"] not in ("queued", "running"):
                    return job
                return {
                    **job,
                    "status": "timeout",
                    "error": f"still {job['status']} after {timeout_s:g} s; the job goes on: "
                    f"`rayetl status {job['id']}` shows it, `rayetl cancel {job['id']}` stops it",
                }

            job = follow(job_until_deadline, pause=functools.partial(wait_for_an_end, 0.5))
        _print_json(
            {"job_id": job["id"], "status": job["status"], "result": job["result"], "error": job["error"]}
        )
        _exit_for(job)


def main() -> None:
    """Entry point of the console script: errors print their message, not a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except RayetlError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
