"""Geometry families: points, lines or polygons, whatever Multi or collection wraps them.

A table holds one family, as its Multi* type (a MultiPolygon table takes polygons, multipolygons
and collections of polygons). These tell a geometry's family and gather parts into the Multi type.
"""

import numpy as np
import shapely

__all__ = [
    "FAMILIES",
    "as_multi",
    "family_of",
    "flat_parts",
    "is_collection",
    "parts_of_family",
    "row_families",
    "type_counts",
]

FAMILIES = ("Point", "LineString", "Polygon")
# Family by shapely type id (Point, LineString, LinearRing, Polygon, MultiPoint, MultiLineString,
# MultiPolygon, GeometryCollection); a collection takes the family of its parts. Index -1 (a missing
# geometry) lands on the None at the end.
_FAMILY_OF = np.array(
    ["Point", "LineString", "LineString", "Polygon", "Point", "LineString", "Polygon", None], dtype=object
)
_COLLECTION = 7
_MULTI = {
    "Point": shapely.multipoints,
    "LineString": shapely.multilinestrings,
    "Polygon": shapely.multipolygons,
}


def family_of(geometry_type: str | None) -> str | None:
    """The family ("Point", "LineString", "Polygon") of a type name like "MultiPolygon" or "Point Z"."""
    if not geometry_type:
        return None
    name = geometry_type.replace("3D ", "").split(" ")[0].removeprefix("Multi")
    return name if name in FAMILIES else None


def row_families(geoms: np.ndarray) -> np.ndarray:
    """Each geometry's family; a collection's is that of its parts, or None when they mix families."""
    type_ids = shapely.get_type_id(geoms)
    families = _FAMILY_OF[type_ids]
    for i in np.flatnonzero(type_ids == _COLLECTION).tolist():
        kinds = set(_FAMILY_OF[shapely.get_type_id(flat_parts(geoms[i]))])
        families[i] = kinds.pop() if len(kinds) == 1 else None
    return families


def is_collection(geoms: np.ndarray) -> np.ndarray:
    """Which geometries are GeometryCollections."""
    return shapely.get_type_id(geoms) == _COLLECTION


def flat_parts(geometry) -> np.ndarray:
    """The simple (not multi, not collection) parts of a geometry."""
    parts = shapely.get_parts(geometry)
    while len(parts) and (shapely.get_type_id(parts) >= 4).any():
        parts = shapely.get_parts(parts)
    return parts


def parts_of_family(geometry, family: str) -> np.ndarray:
    """The simple parts of a geometry that belong to a family (e.g. the polygons of a collection)."""
    parts = flat_parts(geometry)
    return parts[_FAMILY_OF[shapely.get_type_id(parts)] == family]


def as_multi(parts: np.ndarray, family: str):
    """The family's Multi geometry made of these simple parts."""
    return _MULTI[family](parts)


def type_counts(geoms: np.ndarray) -> str:
    """How many geometries of each type, for messages: "Point: 3, Polygon: 2"."""
    type_ids = shapely.get_type_id(geoms)
    kinds, counts = np.unique(type_ids, return_counts=True)
    names = [geoms[type_ids == kind][0].geom_type for kind in kinds]
    return ", ".join(f"{name}: {n}" for name, n in sorted(zip(names, counts.tolist(), strict=True)))
