"""Parameter types shared by the jobs that write STAC items."""

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["CollectionId"]

_COLLECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _check_collection_id(value: str) -> str:
    if not _COLLECTION_ID.match(value):
        raise ValueError(f"{value!r} is not a collection id: use letters, digits, '_', '.' and '-'")
    return value


# A pgstac collection id: safe in URLs (/collections/{id}) and in pgstac's partition names.
CollectionId = Annotated[str, AfterValidator(_check_collection_id)]
