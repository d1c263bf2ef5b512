"""Where /features serves a table: URLs for job results, without importing the server (tipg)."""

from urllib.parse import quote

from rayetl.settings import Settings

__all__ = ["FEATURES_PREFIX", "features_url", "viewer_url"]

FEATURES_PREFIX = "/features"


def features_url(settings: Settings, schema: str, table: str) -> str:
    """URL of a table's features (GeoJSON items)."""
    return f"{_collection_url(settings, schema, table)}/items"


def viewer_url(settings: Settings, schema: str, table: str) -> str:
    """URL of tipg's HTML map viewer of a table (vector tiles on a MapLibre map)."""
    return f"{_collection_url(settings, schema, table)}/viewer.html"


def _collection_url(settings: Settings, schema: str, table: str) -> str:
    return f"{settings.base_url}{FEATURES_PREFIX}/collections/{quote(f'{schema}.{table}')}"
