"""rayetl: geospatial ETL on Ray (vector files into PostGIS, rasters into COGs, both into STAC)."""

__version__ = "0.1.0"
