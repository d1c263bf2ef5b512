"""Logging of rayetl's long-lived processes (API replica, coordinators, janitor)."""

import logging

__all__ = ["configure_service_logging"]

# Libraries that log every request at INFO: their lines would drown the jobs' own.
_CHATTY = ("azure", "adlfs", "urllib3")


def configure_service_logging() -> None:
    """INFO for rayetl's own lines, with a timestamp; WARNING for chatty libraries."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
