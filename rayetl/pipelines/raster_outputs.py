"""Where process_raster writes: a hidden staging folder per job, moved into place when all is valid.

Tasks write their COGs under `<folder>/.<name>.rayetl-tmp-<job>/` (listings never show it), so a
failed or cancelled job leaves nothing under the output path: its cleanup deletes that folder.
Publishing moves each staged file to its final name, tiles first and the main file (COG or VRT)
last, so the output appears complete; a retried publish finds the files it already moved.
"""

from pathlib import PurePosixPath

from rayetl.errors import PermanentError
from rayetl.store.objects import TMP_MARKER, Container

__all__ = ["move_into_place", "staged_path", "staging_folder"]


def staging_folder(output_path: str, job_id: str) -> str:
    """The job's hidden folder beside the output."""
    path = PurePosixPath(output_path)
    hidden = f".{path.stem}{TMP_MARKER}{job_id[:16]}"
    return str(path.parent / hidden) if str(path.parent) != "." else hidden


def staged_path(output_path: str, job_id: str, final_path: str) -> str:
    """Where the job stages `final_path` (a file of the output named by output_path)."""
    parent = PurePosixPath(output_path).parent
    relative = PurePosixPath(final_path).relative_to(parent) if str(parent) != "." else final_path
    return f"{staging_folder(output_path, job_id)}/{relative}"


def move_into_place(container: Container, output_path: str, job_id: str, files: list[str]) -> None:
    """Move each staged file to its final path, in order; files a retry finds moved are skipped."""
    for final in files:
        staged = staged_path(output_path, job_id, final)
        if container.exists(staged):
            container.move(staged, final)
        elif not container.exists(final):
            raise PermanentError(
                f"{final!r} was neither staged nor published in container {container.name!r}: "
                "its staging folder was removed while the job ran; retry the job"
            )
    container.delete_folder(staging_folder(output_path, job_id))
