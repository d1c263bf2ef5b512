"""A small generated vector file for the demo: the same seeded points every time, no download."""

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

__all__ = ["write_sample_points"]

_KINDS = np.array(["weather station", "river gauge", "air quality", "seismometer"])


def write_sample_points(path: Path, n: int = 2_000, seed: int = 42) -> Path:
    """Write n monitoring stations over Europe as GeoJSON (EPSG:4326) to path."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2020-01-01")
    frame = gpd.GeoDataFrame(
        {
            "station": [f"Station {i:04d}" for i in range(n)],
            "kind": _KINDS[rng.integers(0, len(_KINDS), n)],
            "elevation_m": np.round(rng.gamma(2.0, 250.0, n), 1),
            "active": rng.random(n) > 0.1,
            "installed": [
                dt.date.fromisoformat(str(d))
                for d in start + rng.integers(0, 1_800, n).astype("timedelta64[D]")
            ],
        },
        geometry=shapely.points(rng.uniform(-10.0, 30.0, n), rng.uniform(36.0, 70.0, n)),
        crs="EPSG:4326",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_file(path, driver="GeoJSON", engine="pyogrio")
    return path
