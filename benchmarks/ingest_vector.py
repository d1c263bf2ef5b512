"""Vector ingest benchmark: rayetl's ingest_vector against ogr2ogr and geopandas.to_postgis.

Generates seeded sources — points and polygons as GeoPackage, points as a CSV with lat/lon
columns, each with int, float, text and date attributes — then loads each one, on the same private
PostGIS in the same run, with:

1. rayetl: the ingest_vector job, from submission to a published, indexed table with its STAC item;
2. ogr2ogr -f PostgreSQL (COPY mode), with a GIST index;
3. geopandas: pyogrio read (use_arrow=True), to_postgis, then a GIST index (skipped, with the reason,
   when SQLAlchemy or GeoAlchemy2 is not installed).

Each timing runs from the start of the load to a loaded and indexed table; row counts are checked
in the database afterwards. Every loader runs --repeat times (default 3), taking turns, each run
into its own table; the table compares each loader's best run and lists every run below it. It
also samples (psutil, every 0.1 s) the resident memory of the Ray worker processes (`ray::…`)
during the rayetl loads and prints the largest one's peak.
Targets: rayetl at >= 2x ogr2ogr's rows/s on the points and the CSV, >= 1.5x on the polygons,
>= 4x to_postgis on all; with --big (5,000,000 more points, rayetl only), no worker above 1.5 GB.

    .venv/bin/python benchmarks/ingest_vector.py [--points 1000000] [--polygons 200000] [--csv 1000000]
    .venv/bin/python benchmarks/ingest_vector.py --points 20000 --polygons 5000 --csv 20000 \\
        --repeat 1  # quick
    .venv/bin/python benchmarks/ingest_vector.py --big
"""

import argparse
import importlib.util
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv
import pyogrio
import shapely
from private_stack import private_stack, settle
from repeats import fastest

from rayetl.actors import submission
from rayetl.settings import Settings

SCHEMA = "geo"
CONTAINER = "bronze"
LOADERS = ("rayetl", "ogr2ogr", "to_postgis")
WORDS = np.array(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"], dtype=object)
BIG_POINTS = 5_000_000
BIG_WORKER_LIMIT_BYTES = 1.5 * 1024**3
JOB_TIMEOUT_S = 3600
_RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # per-node daemons, not workers


@dataclass(frozen=True)
class Dataset:
    """One generated source and how each loader reads it."""

    name: str
    file_name: str
    rows: int
    target_vs_ogr2ogr: float | None = 2.0
    target_vs_to_postgis: float | None = 4.0
    is_csv: bool = False
    loaders: tuple[str, ...] = LOADERS
    run: int = 1  # which of the repeated runs: each writes its own tables

    def table(self, loader: str) -> str:
        """The table a loader writes: bench_<dataset>_<loader>, with _<run> after the first run.

        A new table per run: an identical rayetl submission is the same job (idempotent), done already.
        """
        return f"bench_{self.name}_{loader}" + (f"_{self.run}" if self.run > 1 else "")


@dataclass
class Load:
    """What one loader did with one dataset."""

    loader: str
    seconds: float | None = None
    db_rows: int | None = None
    has_gist: bool = False
    geometry_type: str = ""
    columns: str = ""  # name:type of every column in the database
    note: str = ""  # why it was skipped or how it failed
    job_id: str | None = None
    peak_worker: "WorkerPeak | None" = None
    run_seconds: list[float] = field(default_factory=list)  # every successful run, when repeated

    @property
    def ok(self) -> bool:
        """Loaded, with a time."""
        return self.seconds is not None


@dataclass
class WorkerPeak:
    """The largest resident memory seen in one Ray worker process, and what it was running."""

    rss_bytes: int = 0
    private_bytes: int = 0  # rss minus shared pages (Ray's object store is mapped shared memory)
    title: str = ""


# -- source generation ---------------------------------------------------------------------------


def attributes(rng: np.random.Generator, n: int) -> dict[str, pa.Array]:
    """id (int), value (float), name (text) and day (date) columns."""
    days = np.datetime64("2020-01-01") + rng.integers(0, 1500, n).astype("timedelta64[D]")
    return {
        "id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "value": pa.array(rng.normal(100.0, 25.0, n)),
        "name": pa.array(WORDS[rng.integers(0, len(WORDS), n)], pa.string()),
        "day": pa.array(days, pa.date32()),
    }


def random_lon_lat(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates spread over the world, away from the poles."""
    return rng.uniform(-179.0, 179.0, n), rng.uniform(-80.0, 80.0, n)


def hexagons(lon: np.ndarray, lat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small random hexagons (0.001° to 0.01° across) around the given centres."""
    radius = rng.uniform(0.0005, 0.005, len(lon))[:, None]
    angles = np.linspace(0.0, 2.0 * np.pi, 7)  # the 7th vertex closes the ring
    coords = np.stack([lon[:, None] + radius * np.cos(angles), lat[:, None] + radius * np.sin(angles)], -1)
    coords[:, -1] = coords[:, 0]
    return shapely.polygons(coords)


def write_gpkg(path: Path, columns: dict[str, pa.Array], geometries: np.ndarray, kind: str) -> None:
    """One layer in EPSG:4326, written from Arrow with WKB geometries."""
    table = pa.table({**columns, "geom": pa.array(shapely.to_wkb(geometries), pa.binary())})
    pyogrio.write_arrow(
        table, path, layer=path.stem, driver="GPKG", geometry_name="geom", geometry_type=kind, crs="EPSG:4326"
    )


def write_points_gpkg(path: Path, n: int, seed: int) -> None:
    """n points with attributes."""
    rng = np.random.default_rng(seed)
    lon, lat = random_lon_lat(rng, n)
    write_gpkg(path, attributes(rng, n), shapely.points(lon, lat), "Point")


def write_polygons_gpkg(path: Path, n: int, seed: int) -> None:
    """n small hexagons with attributes."""
    rng = np.random.default_rng(seed)
    lon, lat = random_lon_lat(rng, n)
    write_gpkg(path, attributes(rng, n), hexagons(lon, lat, rng), "Polygon")


def write_points_csv(path: Path, n: int, seed: int) -> None:
    """n rows with lat and lon columns and attributes."""
    rng = np.random.default_rng(seed)
    lon, lat = random_lon_lat(rng, n)
    columns = attributes(rng, n)
    table = pa.table({"id": columns.pop("id"), "lat": lat.round(6), "lon": lon.round(6), **columns})
    pyarrow.csv.write_csv(table, path)


def generate(datasets: list[Dataset], folder: Path, seed: int) -> None:
    """Write every source into the container folder, reporting time and size."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, dataset in enumerate(datasets):
        path = folder / dataset.file_name
        started = time.perf_counter()
        if dataset.is_csv:
            write_points_csv(path, dataset.rows, seed + i)
        elif "polygon" in dataset.name:
            write_polygons_gpkg(path, dataset.rows, seed + i)
        else:
            write_points_gpkg(path, dataset.rows, seed + i)
        size_mb = path.stat().st_size / 1e6
        seconds = time.perf_counter() - started
        print(f"generated {path.name}: {dataset.rows:,} rows, {size_mb:.0f} MB in {seconds:.1f}s")


# -- Ray worker memory ---------------------------------------------------------------------------


class WorkerMemory:
    """Peak resident memory of the Ray worker processes, sampled in a thread while in the block."""

    def __init__(self, interval_s: float = 0.1):
        self.interval_s = interval_s
        self.peak = WorkerPeak()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-memory", daemon=True)

    def __enter__(self) -> "WorkerMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil  # ray[default] ships psutil inside Ray: importable once rayetl imported ray

        me, processes, listed_at = psutil.Process(), [], 0.0
        while not self._stop.wait(self.interval_s):
            # Listing descendants walks all of /proc: once a second, while reading memory is cheap.
            if time.monotonic() - listed_at > 1.0:
                processes, listed_at = me.children(recursive=True), time.monotonic()
            for process in processes:
                self._sample(process, psutil.Error)

    def _sample(self, process: Any, gone: type[Exception]) -> None:
        # Only this run's cluster: other Ray clusters may share the machine. ray.init started it
        # from this process, so its workers are our descendants (worker <- raylet <- us).
        try:
            title = " ".join(process.cmdline()).strip()
            memory = process.memory_info()
        except gone:  # the worker exited since it was listed: nothing to measure
            return
        if not title.startswith("ray::") or title in _RAY_AGENTS:
            return
        if memory.rss > self.peak.rss_bytes:
            self.peak.rss_bytes, self.peak.title = memory.rss, title
        self.peak.private_bytes = max(self.peak.private_bytes, memory.rss - memory.shared)


# -- loaders -------------------------------------------------------------------------------------


def load_with_rayetl(
    dataset: Dataset, *, settings: Settings, pool: Any, chunk_size: int | None = None
) -> Load:
    """Submit ingest_vector and wait for the published table."""
    params: dict[str, Any] = {
        "blob_name": dataset.file_name,
        "table_name": dataset.table("rayetl"),
        "schema": SCHEMA,
        "if_exists": "replace",
        "chunk_size": chunk_size,
    }
    if dataset.is_csv:
        params["converter_params"] = {"lat_name": "lat", "lon_name": "lon"}
    with WorkerMemory() as memory:
        started = time.perf_counter()
        submitted = submission.submit_job("ingest_vector", params, settings=settings, pool=pool)
        job = submission.wait_for_job(submitted.job.id, pool=pool, timeout_s=JOB_TIMEOUT_S)
        seconds = time.perf_counter() - started
    load = Load("rayetl", job_id=job.id, peak_worker=memory.peak)
    if job.status != "completed":
        load.note = f"job {job.id[:12]} {job.status}: {job.error}"
        print(f"rayetl failed on {dataset.name}: {load.note}")
        return load
    load.seconds = seconds
    return load


def pg_connection_string(database_url: str) -> tuple[str, dict[str, str]]:
    """A `PG:` data source for GDAL, and the environment carrying its password (kept off argv)."""
    url = urlsplit(database_url)
    parts = {"host": url.hostname, "port": url.port, "dbname": url.path.lstrip("/"), "user": url.username}
    source = "PG:" + " ".join(f"{key}={value}" for key, value in parts.items() if value)
    return source, {"PGPASSWORD": unquote(url.password or "")}


def ogr2ogr_command(dataset: Dataset, source: Path, pg_source: str) -> list[str]:
    """ogr2ogr into PostGIS with COPY, a GIST index and a geom column, in EPSG:4326."""
    command = ["ogr2ogr", "-f", "PostgreSQL", "--config", "PG_USE_COPY", "YES", pg_source, str(source)]
    # schema.table in -nln, not -lco SCHEMA: -overwrite then finds the table it has to replace.
    command += ["-nln", f"{SCHEMA}.{dataset.table('ogr2ogr')}", "-overwrite"]
    command += ["-lco", "SPATIAL_INDEX=GIST", "-lco", "GEOMETRY_NAME=geom"]
    if not dataset.is_csv:
        return command + ["-t_srs", "EPSG:4326"]
    # A CSV has no CRS to transform from (-t_srs alone fails): assign EPSG:4326 instead. Column types
    # are detected from the whole file, as rayetl reads a CSV (without this, every column is text).
    command += ["-oo", "X_POSSIBLE_NAMES=lon", "-oo", "Y_POSSIBLE_NAMES=lat", "-a_srs", "EPSG:4326"]
    return command + ["-oo", "AUTODETECT_TYPE=YES", "-oo", "AUTODETECT_SIZE_LIMIT=0"]


def load_with_ogr2ogr(dataset: Dataset, *, source: Path, database_url: str) -> Load:
    """Run ogr2ogr; it builds the GIST index itself after the COPY."""
    pg_source, env = pg_connection_string(database_url)
    command = ogr2ogr_command(dataset, source, pg_source)
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        note = f"ogr2ogr exited {done.returncode}: " + " ".join(done.stderr.split())[-500:]
        print(f"ogr2ogr failed on {dataset.name}: {note}")
        return Load("ogr2ogr", note=note)
    return Load("ogr2ogr", seconds=seconds)


def to_postgis_missing() -> str | None:
    """Why geopandas.to_postgis cannot run here, or None when it can."""
    missing = [name for name in ("sqlalchemy", "geoalchemy2") if importlib.util.find_spec(name) is None]
    if missing:
        return f"skipped: {' and '.join(missing)} not installed in the venv (to_postgis needs both)"
    return None


def load_with_to_postgis(dataset: Dataset, *, source: Path, database_url: str) -> Load:
    """Read with pyogrio (Arrow), write with to_postgis (COPY), then build the GIST index."""
    import sqlalchemy

    table = dataset.table("to_postgis")
    engine = sqlalchemy.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    options = {}
    if dataset.is_csv:
        options = {"X_POSSIBLE_NAMES": "lon", "Y_POSSIBLE_NAMES": "lat"}
        options |= {"AUTODETECT_TYPE": "YES", "AUTODETECT_SIZE_LIMIT": "0"}
    try:
        started = time.perf_counter()
        frame = pyogrio.read_dataframe(source, use_arrow=True, **options)
        if dataset.is_csv:
            frame = frame.set_crs("EPSG:4326")
        frame = frame.rename_geometry("geom")
        frame.to_postgis(table, engine, schema=SCHEMA, if_exists="replace", index=False)
        create_gist_index(database_url, table)
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return Load("to_postgis", seconds=seconds)


# -- database checks -----------------------------------------------------------------------------


def create_gist_index(database_url: str, table: str) -> None:
    """The spatial index to_postgis does not build."""
    statement = psycopg.sql.SQL("CREATE INDEX ON {} USING GIST (geom)")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(statement.format(psycopg.sql.Identifier(SCHEMA, table)))


def checkpoint(database_url: str) -> None:
    """Flush dirty pages so that no load pays for the writes of the one before it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def create_schema(database_url: str) -> None:
    """The schema every loader writes to (ogr2ogr does not create it)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psycopg.sql.Identifier(SCHEMA)))


def check_table(pool: Any, load: Load, table: str) -> None:
    """Record the table's rows, GIST index, geometry type and column types on the load."""
    with pool.connection() as conn:
        if conn.execute("SELECT to_regclass(%s) AS t", (f'{SCHEMA}."{table}"',)).fetchone()["t"] is None:
            return
        query = psycopg.sql.SQL("SELECT count(*) AS n FROM {}").format(psycopg.sql.Identifier(SCHEMA, table))
        load.db_rows = conn.execute(query).fetchone()["n"]
        load.has_gist = conn.execute(
            "SELECT count(*) > 0 AS gist FROM pg_indexes WHERE schemaname = %s AND tablename = %s "
            "AND indexdef ILIKE '%%USING gist%%'",
            (SCHEMA, table),
        ).fetchone()["gist"]
        kind = conn.execute(
            "SELECT type FROM geometry_columns WHERE f_table_schema = %s AND f_table_name = %s",
            (SCHEMA, table),
        ).fetchone()
        columns = conn.execute(
            "SELECT column_name, udt_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (SCHEMA, table),
        ).fetchall()
    load.geometry_type = kind["type"] if kind else "?"
    load.columns = " ".join(f"{c['column_name']}:{c['udt_name']}" for c in columns)


def stage_times(pool: Any, job_id: str) -> list[dict[str, Any]]:
    """Per stage of a job: tasks, first start and last finish (s after submission), task seconds."""
    with pool.connection() as conn:
        return conn.execute(
            """SELECT t.stage, count(*) AS tasks, sum(t.duration_s) AS busy_s, max(t.duration_s) AS longest_s,
                      extract(epoch FROM min(t.started_at) - j.created_at) AS start_s,
                      extract(epoch FROM max(t.finished_at) - j.created_at) AS end_s
               FROM rayetl.tasks t JOIN rayetl.jobs j ON j.id = t.job_id
               WHERE t.job_id = %s GROUP BY t.stage, t.stage_index, j.created_at ORDER BY t.stage_index""",
            (job_id,),
        ).fetchall()


def job_times(pool: Any, job_id: str) -> dict[str, Any]:
    """Seconds after submission when the job's coordinator started and when the job finished."""
    with pool.connection() as conn:
        return conn.execute(
            """SELECT extract(epoch FROM started_at - created_at) AS started_s,
                      extract(epoch FROM finished_at - created_at) AS finished_s
               FROM rayetl.jobs WHERE id = %s""",
            (job_id,),
        ).fetchone()


# -- running and reporting -----------------------------------------------------------------------


def run_loader(
    loader: str, dataset: Dataset, *, settings: Settings, pool: Any, skip_reason: str | None
) -> Load:
    """One load, timed, then checked in the database; a failing anchor is reported, not fatal."""
    source = settings.local_storage_root / CONTAINER / dataset.file_name
    database_url = settings.database_url.get_secret_value()
    if loader == "to_postgis" and skip_reason:
        return Load(loader, note=skip_reason)
    checkpoint(database_url)
    settle(settings)
    if loader == "rayetl":
        load = load_with_rayetl(dataset, settings=settings, pool=pool)
    elif loader == "ogr2ogr":
        load = load_with_ogr2ogr(dataset, source=source, database_url=database_url)
    else:
        try:
            load = load_with_to_postgis(dataset, source=source, database_url=database_url)
        except Exception as exc:  # an anchor's failure is a result to print, not a reason to stop
            load = Load(loader, note=" ".join(f"failed: {type(exc).__name__}: {exc}".split())[:500])
            print(f"to_postgis failed on {dataset.name}: {load.note}")
    check_table(pool, load, dataset.table(loader))
    return load


def warm_up(settings: Settings, pool: Any) -> None:
    """A small ingest first: the cluster's start and the first job's one-off costs stay out of the timings.

    In small chunks, so that it runs as many uploads at once as the big loads: their worker
    processes are started here, as they would be in a service that has run a job before.
    """
    warm = Dataset("warmup", "warmup.gpkg", 8_000)
    generate([warm], settings.local_storage_root / CONTAINER, seed=0)
    load = load_with_rayetl(warm, settings=settings, pool=pool, chunk_size=1_000)
    if not load.ok:
        raise SystemExit(f"warm-up ingest failed: {load.note}")


def best_of(runs: list[Load]) -> Load:
    """The fastest run (a failed run if none succeeded), with the largest worker peak of them all."""
    best = fastest(runs)
    peaks = [load.peak_worker for load in runs if load.peak_worker is not None]
    best.peak_worker = max(peaks, key=lambda peak: peak.rss_bytes) if peaks else None
    return best


def rate(load: Load, rows: int) -> float | None:
    """Rows per second of a load, or None when it did not run."""
    return rows / load.seconds if load.ok and load.seconds else None


def ratio_cell(rayetl: Load, anchor: Load | None, rows: int, target: float | None) -> str:
    """rayetl's speed-up over an anchor, with the target and whether it is met."""
    if target is None or anchor is None:
        return "-"
    ours, theirs = rate(rayetl, rows), rate(anchor, rows)
    if ours is None or theirs is None:
        return f"- (>={target:g}x)"
    speedup = ours / theirs
    return f"{speedup:.2f}x (>={target:g}x) {'ok' if speedup >= target else 'MISSED'}"


def time_cells(load: Load | None, rows: int) -> str:
    """Seconds and rows/s of one loader."""
    if load is None:
        return f"{'-':>8} {'-':>9}"
    if not load.ok:
        return f"{'skipped' if load.note.startswith(('skipped', 'not run')) else 'FAILED':>8} {'-':>9}"
    return f"{load.seconds:>8.2f} {rate(load, rows):>9,.0f}"


def print_summary(results: list[tuple[Dataset, dict[str, Load]]]) -> None:
    """The comparison table: one line per dataset."""
    print()
    print(
        f"{'dataset':<12} {'rows':>9} | {'rayetl s':>8} {'rows/s':>9} | {'ogr2ogr s':>8} {'rows/s':>9} | "
        f"{'to_pg s':>8} {'rows/s':>9} | {'rayetl/ogr2ogr (target)':<27} | {'rayetl/to_postgis (target)':<27}"
        f" | {'worker peak RSS':>15}"
    )
    for dataset, loads in results:
        rayetl = loads["rayetl"]
        peak = rayetl.peak_worker
        print(
            f"{dataset.name:<12} {dataset.rows:>9,} | {time_cells(rayetl, dataset.rows)} | "
            f"{time_cells(loads.get('ogr2ogr'), dataset.rows)} | "
            f"{time_cells(loads.get('to_postgis'), dataset.rows)} | "
            f"{ratio_cell(rayetl, loads.get('ogr2ogr'), dataset.rows, dataset.target_vs_ogr2ogr):<27} | "
            f"{ratio_cell(rayetl, loads.get('to_postgis'), dataset.rows, dataset.target_vs_to_postgis):<27}"
            " | " + (f"{peak.rss_bytes / 1e6:>12,.0f} MB" if peak else f"{'-':>15}")
        )


def print_runs(results: list[tuple[Dataset, dict[str, Load]]]) -> None:
    """Every run's seconds, so that the spread behind each best is visible."""
    print("\nseconds of every run, in order")
    for dataset, loads in results:
        runs = " | ".join(
            f"{load.loader} " + " ".join(f"{seconds:.2f}" for seconds in load.run_seconds)
            for load in loads.values()
            if load.run_seconds
        )
        print(f"  {dataset.name:<12} {runs}")


def print_checks(results: list[tuple[Dataset, dict[str, Load]]]) -> None:
    """Rows, GIST index, geometry and column types of every table, or why a loader did not run."""
    print(
        f"\n{'dataset':<12} {'loader':<11} {'db rows':>9} {'expected':>9} {'gist':>5} {'geometry':<13} "
        "columns"
    )
    for dataset, loads in results:
        for load in loads.values():
            db_rows = "-" if load.db_rows is None else f"{load.db_rows:,}"
            flag = "ROW COUNT MISMATCH " if load.db_rows not in (None, dataset.rows) else ""
            print(
                f"{dataset.name:<12} {load.loader:<11} {db_rows:>9} {dataset.rows:>9,} "
                f"{'yes' if load.has_gist else 'no':>5} {load.geometry_type or '-':<13} "
                f"{flag}{load.note or load.columns}"
            )


def print_workers(results: list[tuple[Dataset, dict[str, Load]]]) -> None:
    """The largest Ray worker's peak memory during each rayetl load."""
    print("\nlargest Ray worker during each rayetl load (RSS; private = RSS minus shared pages)")
    for dataset, loads in results:
        peak = loads["rayetl"].peak_worker
        if peak is None:
            continue
        verdict = ""
        if dataset.rows >= BIG_POINTS:
            verdict = "  ok (<= 1.5 GB)" if peak.rss_bytes <= BIG_WORKER_LIMIT_BYTES else "  ABOVE 1.5 GB"
        print(
            f"  {dataset.name:<12} rss {peak.rss_bytes / 1e6:>7,.0f} MB  "
            f"private {peak.private_bytes / 1e6:>7,.0f} MB  {peak.title[:60]}{verdict}"
        )


def print_stages(pool: Any, results: list[tuple[Dataset, dict[str, Load]]]) -> None:
    """Where each rayetl job's time went, stage by stage (from rayetl.jobs and rayetl.tasks)."""
    print("\nrayetl timeline, seconds after the job row was created: each stage's first task start -> last")
    print("task end, its tasks, their summed and longest duration_s")
    for dataset, loads in results:
        job_id = loads["rayetl"].job_id
        if job_id is None:
            continue
        times = job_times(pool, job_id)
        started_s, finished_s = float(times["started_s"] or 0), float(times["finished_s"] or 0)
        print(f"  {dataset.name}: job {job_id[:12]}, coordinator up +{started_s:.2f}, done +{finished_s:.2f}")
        for row in stage_times(pool, job_id):
            start_s, end_s = float(row["start_s"] or 0), float(row["end_s"] or 0)
            print(
                f"    {row['stage']:<10} +{start_s:>6.2f} -> +{end_s:>6.2f}  {row['tasks']:>4} tasks"
                f"  sum {row['busy_s'] or 0:>7.2f}  longest {row['longest_s'] or 0:>6.2f}"
            )


def datasets_from(args: argparse.Namespace) -> list[Dataset]:
    """The datasets asked for on the command line (a size of 0 leaves one out)."""
    datasets = [
        Dataset("points", "points.gpkg", args.points),
        Dataset("polygons", "polygons.gpkg", args.polygons, target_vs_ogr2ogr=1.5),
        Dataset("csv", "points.csv", args.csv, is_csv=True),
    ]
    if args.big:
        datasets.append(Dataset("points_big", "points_big.gpkg", BIG_POINTS, None, None, loaders=("rayetl",)))
    return [dataset for dataset in datasets if dataset.rows > 0]


def run_all(datasets: list[Dataset], loaders: list[str], repeat: int, settings: Settings, pool: Any) -> None:
    """Load every dataset with every loader `repeat` times (loaders taking turns), then print the results.

    Each loader's best run is compared: this machine's timings swing by up to ±20% from one run to
    the next, and the fastest run is the one least disturbed (as timeit does).
    """
    skip_reason = to_postgis_missing()
    results = []
    # Timings on a shared machine mean little when something else is busy: show how busy it was.
    print("load average (1, 5, 15 min) before the loads: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    for dataset in datasets:
        runs: dict[str, list[Load]] = {}
        for run in range(1, repeat + 1):
            for loader in [name for name in LOADERS if name in loaders and name in dataset.loaders]:
                load = run_loader(
                    loader, replace(dataset, run=run), settings=settings, pool=pool, skip_reason=skip_reason
                )
                runs.setdefault(loader, []).append(load)
                shown = f"{load.seconds:.2f}s" if load.ok else load.note[:80]
                print(f"{dataset.name} {loader} run {run}/{repeat}: {shown}", flush=True)
        loads = {loader: best_of(done) for loader, done in runs.items()}
        loads.setdefault("rayetl", Load("rayetl", note="not run"))
        results.append((dataset, loads))
    print("load average (1, 5, 15 min) after the loads: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if repeat > 1:
        print(f"\neach loader's best of {repeat} runs")
    print_summary(results)
    print_runs(results)
    print_checks(results)
    print_workers(results)
    print_stages(pool, results)


def run(args: argparse.Namespace) -> None:
    """Private PostGIS and Ray, seeded sources, then the loads."""
    with private_stack() as (settings, pool):
        create_schema(settings.database_url.get_secret_value())
        datasets = datasets_from(args)
        generate(datasets, settings.local_storage_root / CONTAINER, args.seed)
        if "rayetl" in args.loaders:
            warm_up(settings, pool)
        run_all(datasets, args.loaders, args.repeat, settings, pool)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=1_000_000, help="points in points.gpkg (0: none)")
    parser.add_argument("--polygons", type=int, default=200_000, help="polygons in polygons.gpkg (0: none)")
    parser.add_argument("--csv", type=int, default=1_000_000, help="rows of points.csv (0: none)")
    parser.add_argument("--big", action="store_true", help=f"also {BIG_POINTS:,} points, rayetl only")
    parser.add_argument("--loaders", nargs="+", choices=LOADERS, default=list(LOADERS))
    parser.add_argument("--repeat", type=int, default=3, help="runs per loader; the best one counts")
    parser.add_argument("--seed", type=int, default=20240601)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    run(parser.parse_args())
