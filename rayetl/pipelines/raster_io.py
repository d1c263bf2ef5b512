"""Open a raster where its container keeps it, with rasterio; a file GDAL cannot read fails for good."""

from collections.abc import Iterator
from contextlib import contextmanager

import rasterio
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader

from rayetl.errors import PermanentError
from rayetl.store.objects import Container

__all__ = ["READ_OPTIONS", "UnreadableRasterError", "open_raster", "raster_errors"]

# GDAL retries throttled and failed HTTP requests itself (GDAL_HTTP_MAX_RETRY), so an I/O error that
# still reaches rasterio is about the file, not the weather: that is why it is a permanent error.
READ_OPTIONS = {
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
}
# Without it, opening /vsiaz/c/a/b.tif lists the whole "folder" a/ to look for sidecar files.
_REMOTE_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


class UnreadableRasterError(PermanentError):
    """A file that GDAL cannot open or decode: not a raster, truncated or corrupt."""

    def __init__(self, source: str, detail: str):
        super().__init__(
            f"{source} cannot be read as a raster: {detail}. Check that it is a complete raster file "
            "in a format GDAL reads; upload it again if the copy was cut short"
        )
        self.source, self.detail = source, detail

    def __reduce__(self):
        # Ray pickles a task's exception: rebuild it from both arguments, not from the message alone.
        return type(self), (self.source, self.detail)


def _detail(exc: BaseException, hide: str, show: str) -> str:
    # rasterio's read errors say "Read failed. See previous exception for details."; GDAL's own
    # message (which block failed and why) is the cause. Local paths are replaced by the blob's name.
    messages = []
    while exc is not None and len(messages) < 3:
        text = str(exc).strip()
        text = text.replace(hide, show) if hide else text
        if text and "See previous exception" not in text:
            messages.append(text.rstrip("."))
        exc = exc.__cause__
    return "; ".join(messages) or "GDAL gave no reason"


@contextmanager
def raster_errors(source: str, *, hide: str = "", show: str = "") -> Iterator[None]:
    """Turn rasterio's I/O errors (open or read) into UnreadableRasterError naming `source`.

    rasterio's RasterioIOError is an OSError, which the engine would retry as transient.
    """
    try:
        yield
    except RasterioIOError as exc:
        raise UnreadableRasterError(source, _detail(exc, hide, show)) from exc


@contextmanager
def open_raster(container: Container, path: str) -> Iterator[DatasetReader]:
    """The raster at `path` opened in place with rasterio, inside a GDAL environment for reading it.

    Raises NotFound (naming the file and the container) when it does not exist, and
    UnreadableRasterError when GDAL cannot open it. Reads inside the block are not wrapped: put them
    in `raster_errors(...)` to make a failed read permanent too.
    """
    container.info(path)  # NotFound naming both; storage OSErrors stay transient
    gdal_path = container.gdal_path(path)
    options = dict(READ_OPTIONS)
    if gdal_path.startswith("/vsi"):
        options.update(_REMOTE_OPTIONS)
    options.update(container.gdal_env())
    source = f"{path!r} in container {container.name!r}"
    with rasterio.Env(**options):
        with raster_errors(source, hide=gdal_path, show=path):
            dataset = rasterio.open(gdal_path)
        with dataset:
            yield dataset
