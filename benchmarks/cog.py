"""COG benchmark: rayetl's process_raster against gdal_translate and rio cogeo, same machine, same run.

Generates (seeded) a 10,000 x 10,000 3-band uint8 image and an 8,000 x 8,000 float32 DEM with
nodata, both plain striped GeoTIFFs, then turns each into a Cloud Optimized GeoTIFF with the same
profile (DEFLATE, predictor, 512 px blocks, average overviews) using:

1. `gdal_translate -of COG` (GDAL's COG driver, one thread: GDAL's default);
2. `gdal_translate -of COG -co NUM_THREADS=ALL_CPUS`;
3. `rio cogeo create` (rio-cogeo's command line);
4. rayetl `process_raster`, untiled (one COG), from submission to a completed job (COG validated,
   moved into place, STAC item in pgstac);
5. rayetl `process_raster`, tiled (`--tile-size` px windows, one Ray task each, plus the VRT).

Every tool runs --repeat times (default 3), taking turns; each tool's best run is compared and
every run's seconds are listed. Prints seconds and ratios. Targets on 2 cores: untiled <= 1.1x
gdal_translate's time; tiled faster than gdal_translate with NUM_THREADS=ALL_CPUS on the large
image.

    .venv/bin/python benchmarks/cog.py [--rgb-size 10000] [--dem-size 8000] [--tile-size 5120]
    .venv/bin/python benchmarks/cog.py --rgb-size 2000 --dem-size 1600 --tile-size 1024 --repeat 1  # quick
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from private_stack import private_stack, settle
from rasterio.transform import from_origin
from rasterio.windows import Window
from repeats import fastest
from rio_cogeo.cogeo import cog_validate

from rayetl.actors import submission
from rayetl.settings import Settings

BRONZE, SILVER = "bronze", "silver"
JOB_TIMEOUT_S = 3600
UNTILED = 65_536  # the largest tile_size_px: one COG for any source here
ROWS_PER_WRITE = 512  # the generator writes the sources a strip at a time: memory stays small


@dataclass(frozen=True)
class Source:
    """A generated raster and the COG profile every tool uses for it."""

    name: str
    size: int
    bands: int
    dtype: str
    nodata: float | None
    predictor: int

    @property
    def file_name(self) -> str:
        return f"{self.name}.tif"

    @property
    def megapixels(self) -> float:
        return self.size * self.size / 1e6


@dataclass
class Run:
    """One tool's conversion of one source: seconds, output bytes, and whether the COG is valid."""

    tool: str
    seconds: float | None = None
    output_bytes: int | None = None
    valid: bool | None = None
    note: str = ""
    run_seconds: list[float] = field(default_factory=list)  # every successful run, when repeated


# -- sources ---------------------------------------------------------------------------------------


def generate(source: Source, path: Path, seed: int) -> None:
    """A plain striped, uncompressed GeoTIFF, as rasters usually arrive."""
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff",
        "width": source.size,
        "height": source.size,
        "count": source.bands,
        "dtype": source.dtype,
        "crs": "EPSG:32632",
        "transform": from_origin(500_000, 5_900_000, 10, 10),
        "nodata": source.nodata,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, source.size, ROWS_PER_WRITE):
            height = min(ROWS_PER_WRITE, source.size - row)
            dst.write(_strip(source, rng, row, height), window=Window(0, row, source.size, height))


def _strip(source: Source, rng: np.random.Generator, row: int, height: int) -> np.ndarray:
    """Smooth terrain-like values with noise: compresses like real data, not like zeros or noise."""
    rows, cols = np.mgrid[row : row + height, 0 : source.size].astype("float32")
    base = 120 + 60 * np.sin(rows / 211) * np.cos(cols / 157)
    if source.dtype == "uint8":
        bands = [base + rng.normal(0, 6, base.shape) + 20 * band for band in range(source.bands)]
        return np.clip(np.stack(bands), 0, 255).astype("uint8")
    dem = (base * 10 + rng.normal(0, 0.5, base.shape)).astype("float32")
    dem[:, : source.size // 16] = source.nodata  # a strip of nodata along the west edge
    return dem[np.newaxis]


# -- tools -----------------------------------------------------------------------------------------


def gdal_translate(source: Source, src: Path, dst: Path, *, all_cpus: bool) -> list[str]:
    command = ["gdal_translate", "-q", "-of", "COG", "-co", "COMPRESS=DEFLATE", "-co", "BLOCKSIZE=512"]
    command += ["-co", f"PREDICTOR={source.predictor}", "-co", "OVERVIEW_RESAMPLING=AVERAGE"]
    if all_cpus:
        command += ["-co", "NUM_THREADS=ALL_CPUS"]
    return [*command, str(src), str(dst)]


def rio_cogeo(source: Source, src: Path, dst: Path) -> list[str]:
    rio = Path(sys.executable).with_name("rio")
    options = ["--cog-profile", "deflate", "--overview-resampling", "average", "--blocksize", "512"]
    options += ["--co", f"PREDICTOR={source.predictor}", "--quiet"]
    return [str(rio), "cogeo", "create", *options, str(src), str(dst)]


def run_command(tool: str, command: list[str], dst: Path) -> Run:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return Run(tool, note=f"exit {done.returncode}: {done.stderr.strip()[:200]}")
    return Run(tool, seconds, dst.stat().st_size, cog_validate(str(dst), quiet=True)[0])


def run_rayetl(
    tool: str, source: Source, *, settings: Settings, pool: Any, tile_size: int, run: int = 1
) -> Run:
    """Submit process_raster and wait for the completed job; check what it wrote.

    Each run writes its own output: an identical submission is the same job (idempotent), done already.
    """
    output = f"{tool}/{run}/{source.name}.tif"
    params = {
        "blob_name": source.file_name,
        "output_path": output,
        "cog_profile": "deflate",
        "overview_resampling": "average",
        "tile_size_px": tile_size,
        "if_exists": "replace",
    }
    started = time.perf_counter()
    submitted = submission.submit_job("process_raster", params, settings=settings, pool=pool)
    job = submission.wait_for_job(submitted.job.id, pool=pool, timeout_s=JOB_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if job.status != "completed":
        return Run(tool, note=f"job {job.id[:12]} {job.status}: {job.error}"[:300])
    files = [settings.local_storage_root / SILVER / f for f in job.result["files"]]
    cogs = [f for f in files if f.suffix == ".tif"]
    valid = all(cog_validate(str(f), quiet=True)[0] for f in cogs)
    return Run(tool, seconds, sum(f.stat().st_size for f in files), valid, note=f"{len(cogs)} COG(s)")


def warm_up(settings: Settings, pool: Any) -> None:
    """A small process_raster first: the cluster's start and the first job's one-off costs stay out."""
    source = Source("warmup", 256, 3, "uint8", None, predictor=2)
    generate(source, settings.local_storage_root / BRONZE / source.file_name, seed=0)
    run = run_rayetl("warm-up", source, settings=settings, pool=pool, tile_size=UNTILED)
    if run.seconds is None:
        raise SystemExit(f"warm-up job failed: {run.note}")


def convert_all(source: Source, *, settings: Settings, pool: Any, tile_size: int, repeat: int) -> list[Run]:
    """Every tool `repeat` times, taking turns; each tool's fastest run (repeats.fastest)."""
    src = settings.local_storage_root / BRONZE / source.file_name
    out = settings.home / "anchors"
    out.mkdir(exist_ok=True)
    runs: dict[str, list[Run]] = {}
    for run in range(1, repeat + 1):
        for tool, command in (
            ("gdal_translate", gdal_translate(source, src, out / "gt.tif", all_cpus=False)),
            ("gdal_translate ALL_CPUS", gdal_translate(source, src, out / "gt_mt.tif", all_cpus=True)),
            ("rio cogeo create", rio_cogeo(source, src, out / "rio.tif")),
        ):
            settle(settings)
            runs.setdefault(tool, []).append(run_command(tool, command, Path(command[-1])))
            Path(command[-1]).unlink(missing_ok=True)
            print(f"  {source.name} {tool} run {run}/{repeat}: {_seconds(runs[tool][-1])}", flush=True)
        for tool, size in (("rayetl untiled", UNTILED), ("rayetl tiled", tile_size)):
            settle(settings)
            done = run_rayetl(tool, source, settings=settings, pool=pool, tile_size=size, run=run)
            runs.setdefault(tool, []).append(done)
            print(f"  {source.name} {tool} run {run}/{repeat}: {_seconds(done)}", flush=True)
    shutil.rmtree(out)
    return [fastest(tool_runs) for tool_runs in runs.values()]


# -- report ----------------------------------------------------------------------------------------


def _seconds(run: Run) -> str:
    return f"{run.seconds:.2f}s" if run.seconds is not None else run.note


def print_table(results: list[tuple[Source, list[Run]]], repeat: int) -> None:
    print()
    if repeat > 1:
        print(f"each tool's best of {repeat} runs (every run's seconds in the last column)")
    print(f"{'source':<10} {'tool':<24} {'seconds':>8} {'MB out':>8} {'valid':>6} {'vs gdal_translate':>18}")
    for source, runs in results:
        anchor = runs[0].seconds
        for run in runs:
            ratio = f"{run.seconds / anchor:.2f}x" if run.seconds and anchor else "-"
            size = f"{run.output_bytes / 1e6:.1f}" if run.output_bytes else "-"
            print(
                f"{source.name:<10} {run.tool:<24} {_seconds(run):>8} {size:>8} "
                f"{str(run.valid):>6} {ratio:>18}  {run.note if run.seconds else ''}"
                + (f"  runs: {' '.join(f'{s:.2f}' for s in run.run_seconds)}" if repeat > 1 else "")
            )
    print()
    for source, runs in results:
        by_tool = {run.tool: run.seconds for run in runs}
        untiled, tiled = by_tool.get("rayetl untiled"), by_tool.get("rayetl tiled")
        gt, gt_mt = by_tool.get("gdal_translate"), by_tool.get("gdal_translate ALL_CPUS")
        if untiled and gt:
            verdict = "met" if untiled <= 1.1 * gt else "missed"
            print(f"{source.name}: untiled {untiled / gt:.2f}x gdal_translate (target <= 1.10x: {verdict})")
        if tiled and gt_mt:
            verdict = "met" if tiled < gt_mt else "missed"
            print(
                f"{source.name}: tiled {tiled / gt_mt:.2f}x gdal_translate ALL_CPUS (target < 1x: {verdict})"
            )


def run(args: argparse.Namespace) -> None:
    sources = [
        Source("rgb", args.rgb_size, 3, "uint8", None, predictor=2),
        Source("dem", args.dem_size, 1, "float32", -9999.0, predictor=3),
    ]
    with private_stack() as (settings, pool):
        (settings.local_storage_root / SILVER).mkdir(parents=True)
        for index, source in enumerate(sources):
            started = time.perf_counter()
            generate(source, settings.local_storage_root / BRONZE / source.file_name, args.seed + index)
            elapsed = time.perf_counter() - started
            print(f"generated {source.name} ({source.megapixels:.0f} Mpx) in {elapsed:.1f}s")
        warm_up(settings, pool)
        print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        results = [
            (
                source,
                convert_all(
                    source, settings=settings, pool=pool, tile_size=args.tile_size, repeat=args.repeat
                ),
            )
            for source in sources
        ]
        print("load average (1, 5, 15 min) after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        print_table(results, args.repeat)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rgb-size", type=int, default=10_000, help="side of the RGB image, px")
    parser.add_argument("--dem-size", type=int, default=8_000, help="side of the DEM, px")
    parser.add_argument("--tile-size", type=int, default=5_120, help="tile_size_px of the tiled run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the best one counts")
    parser.add_argument("--seed", type=int, default=20240601)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    run(parser.parse_args())
