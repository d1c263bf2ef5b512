"""Retry policy: classify a task's exception as transient or permanent, and how long to wait."""

import random
from dataclasses import dataclass

import psycopg
import ray.exceptions
from azure.core import exceptions as azure_errors

from rayetl.errors import Conflict, InvalidRequest, NotFound, PermanentError, TransientError

__all__ = ["Verdict", "backoff_s", "classify", "describe", "unwrap"]

# Errors about the input, not the weather (these OSErrors included): retrying cannot help.
_PERMANENT = (
    PermanentError,
    InvalidRequest,
    NotFound,
    Conflict,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    azure_errors.ResourceNotFoundError,  # a blob or container that is not there
    azure_errors.ClientAuthenticationError,  # wrong credentials: fix the configuration
)
_TRANSIENT = (
    TransientError,
    ConnectionError,
    TimeoutError,
    OSError,
    psycopg.OperationalError,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.OwnerDiedError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.OutOfMemoryError,
    ray.exceptions.ActorUnavailableError,
    azure_errors.ServiceRequestError,  # Azure unreachable (not an OSError)
    azure_errors.ServiceResponseError,  # the connection broke mid-answer
)


@dataclass(frozen=True)
class Verdict:
    """Whether a failed attempt is retried, and the kind of error it was."""

    retry: bool
    kind: str  # "transient", "permanent" or "unknown"


def unwrap(exc: BaseException) -> BaseException:
    """The task's own exception inside Ray's wrapper, when there is one."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        return cause if cause is not None else exc
    return exc


def classify(exc: BaseException, attempt: int, max_attempts: int) -> Verdict:
    """Transient errors retry up to max_attempts; unknown ones once; permanent ones never."""
    exc = unwrap(exc)
    if isinstance(exc, _PERMANENT):
        return Verdict(False, "permanent")
    if isinstance(exc, _TRANSIENT):
        return Verdict(attempt < max_attempts, "transient")
    return Verdict(attempt < min(2, max_attempts), "unknown")


def describe(exc: BaseException) -> str:
    """A one-line message for the audit trail: the task's own message, not Ray's traceback."""
    exc = unwrap(exc)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, PermanentError | TransientError) and message:
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def backoff_s(attempt: int, *, base_s: float, max_s: float) -> float:
    """Exponential backoff with a little jitter, so retried tasks don't all return at once."""
    delay = min(max_s, base_s * 2 ** (attempt - 1))
    return delay * random.uniform(0.8, 1.0)
