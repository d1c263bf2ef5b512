"""What kind of raster a file holds, and the COG profile that suits that kind."""

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from rasterio.enums import ColorInterp
from rasterio.io import DatasetReader

from rayetl.pipelines.raster_params import COG_COMPRESSIONS

__all__ = ["MAX_CLASSES", "CogProfile", "RasterKind", "ValueSample", "detect_kind", "recommend_profile"]

RasterKind = Literal["rgb", "rgba", "continuous", "categorical", "multispectral"]
# An integer band with at most this many distinct values in a large enough sample holds classes
# (CORINE land cover has 44). Taking a continuous band for classes costs little (mode overviews);
# the reverse averages class codes into classes that do not exist.
MAX_CLASSES = 64
MIN_CLASS_SAMPLE_PX = 1024  # fewer valid pixels than this say nothing about the number of values
BLOCKSIZE = 512


class CogProfile(BaseModel):
    """How to write a raster as a COG: compression, predictor, overview resampling, tile size."""

    compression: Literal[COG_COMPRESSIONS]  # type: ignore[valid-type]
    predictor: Literal[2, 3] | None = Field(
        None, description="2: horizontal differencing (integers), 3: floating point; None for jpeg/webp."
    )
    overview_resampling: Literal["average", "mode", "nearest"]
    blocksize: int = BLOCKSIZE
    reason: str = Field(..., description="Why this profile suits the raster.")


@dataclass(frozen=True)
class ValueSample:
    """What a decimated read of the raster shows."""

    pixels: int  # pixels read (per band)
    valid_pixels: int  # pixels that are not nodata in at least one band
    distinct_values: int | None  # distinct valid values of band 1, for integer bands
    has_unmasked_nan: bool  # NaN in a float band that declares no nodata


def detect_kind(dataset: DatasetReader, sample: ValueSample) -> RasterKind:
    """RGB(A) imagery from the colour interpretation, else one band or many; classes from the values."""
    interp = list(dataset.colorinterp)
    colours = [c for c in interp if c is not ColorInterp.alpha]
    if len(colours) == 3 and set(colours) == {ColorInterp.red, ColorInterp.green, ColorInterp.blue}:
        return "rgba" if ColorInterp.alpha in interp else "rgb"
    if len(colours) > 1:
        return "multispectral"
    if ColorInterp.palette in interp:
        return "categorical"
    if np.dtype(dataset.dtypes[0]).kind not in "iu":
        return "continuous"
    few = sample.distinct_values is not None and sample.distinct_values <= MAX_CLASSES
    return "categorical" if few and sample.valid_pixels >= MIN_CLASS_SAMPLE_PX else "continuous"


def recommend_profile(kind: RasterKind, dtype: str, nodata: float | None) -> CogProfile:
    """JPEG/WebP for 8-bit imagery without nodata, else lossless deflate with the dtype's predictor."""
    if dtype == "uint8" and kind == "rgb" and nodata is None:
        return CogProfile(
            compression="jpeg",
            overview_resampling="average",
            reason="8-bit RGB imagery: JPEG in YCbCr is several times smaller and visually lossless",
        )
    if dtype == "uint8" and kind == "rgba":
        return CogProfile(
            compression="webp",
            overview_resampling="average",
            reason="8-bit RGBA imagery: WebP compresses like JPEG and keeps the alpha band (JPEG cannot)",
        )
    numbers = np.dtype(dtype).kind
    predictor = 3 if numbers == "f" else 2 if numbers in "iu" else None
    if kind == "categorical":
        resampling, why = (
            "mode",
            "classes: lossless, overviews keep the most frequent class (never an average)",
        )
    elif kind in ("rgb", "rgba") and nodata is not None:
        resampling, why = "average", "imagery with nodata: lossless, since JPEG would smear data into nodata"
    else:
        resampling, why = "average", f"{kind} {dtype} values: lossless, overviews averaged"
    return CogProfile(compression="deflate", predictor=predictor, overview_resampling=resampling, reason=why)
