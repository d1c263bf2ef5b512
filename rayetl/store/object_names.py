"""Names in object storage: the container naming rule, and container-relative paths that cannot escape."""

import re

from rayetl.errors import InvalidRequest

__all__ = ["check_container_name", "is_container_name", "normalize_path"]

# Azure Blob Storage's rule, so that a local container can move to Azure under the same name.
_NAME_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_NAME_RULE = (
    "3 to 63 characters: lower-case letters, digits and single hyphens, "
    "starting and ending with a letter or digit"
)


def is_container_name(name: str) -> bool:
    """Whether name follows the container naming rule."""
    return 3 <= len(name) <= 63 and _NAME_PATTERN.fullmatch(name) is not None


def check_container_name(name: str) -> None:
    """InvalidRequest, saying the rule, when name does not follow it."""
    if not is_container_name(name):
        raise InvalidRequest(
            f"invalid container name {name!r}: use {_NAME_RULE}, e.g. 'bronze' or 'raw-2024'"
        )


def normalize_path(path: str, *, container: str | None = None) -> str:
    """A container-relative path, normalised ('a//./b' → 'a/b'); InvalidRequest if it could escape."""
    where = f"path {path!r}" + (f" in container {container!r}" if container else "")
    if "\x00" in path:
        raise InvalidRequest(f"{where} contains a NUL byte: remove it")
    if "\\" in path:
        raise InvalidRequest(f"{where} contains a backslash: separate folders with '/'")
    if "://" in path:
        raise InvalidRequest(
            f"{where} is a URL: use a path relative to the container, e.g. 'folder/file.csv'"
        )
    if path.startswith("/"):
        raise InvalidRequest(
            f"{where} is absolute: use a path relative to the container, e.g. {path.lstrip('/')!r}"
        )
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        leaves = f"container {container!r}" if container else "its container"
        raise InvalidRequest(
            f"path {path!r} leaves {leaves}: use a path relative to the container, without '..'"
        )
    return "/".join(parts)
