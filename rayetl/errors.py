"""Exception types; str(exc) is the message a person reads, saying what is wrong and how to fix it."""

__all__ = [
    "Conflict",
    "InvalidRequest",
    "NotFound",
    "PermanentError",
    "RayetlError",
    "TaskError",
    "TransientError",
    "Unauthorized",
]


class RayetlError(Exception):
    """Base class of every error rayetl raises on purpose."""


class InvalidRequest(RayetlError):
    """Bad parameters or a path outside its container (HTTP 400/422)."""

    def __init__(self, message: str, *, fields: list[dict] | None = None):
        super().__init__(message)
        self.fields = fields or []


class NotFound(RayetlError):
    """Unknown job, job type, container or file (HTTP 404)."""


class Conflict(RayetlError):
    """The request clashes with the current state (HTTP 409)."""


class Unauthorized(RayetlError):
    """Missing or wrong API token (HTTP 401)."""


class TaskError(RayetlError):
    """Raised inside tasks; the coordinator reads the subclass to decide on a retry."""


class PermanentError(TaskError):
    """Bad data or params: the task fails now, without a retry."""


class TransientError(TaskError):
    """Connection reset, timeout, throttling, a dead worker: retried with backoff."""
