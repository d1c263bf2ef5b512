"""Storage: the audit trail, PostGIS and pgstac writers, and object storage over fsspec."""
