"""The short name gunicorn users type: ``gunicorn -k smartspawn.Worker``."""
import gunicorn_smartspawn
from gunicorn_smartspawn import (
    ThreadWorker, Worker, __version__, extend_deadline, no_longer_fork_safe, prevent_fork,
)

__all__ = ["Worker", "ThreadWorker", "ASGIWorker", "UvicornWorker", "UvicornH11Worker",
           "GeventWorker", "__version__", "prevent_fork", "no_longer_fork_safe",
           "extend_deadline"]


def __getattr__(name: str) -> type:
    # The event-loop workers (ASGIWorker, UvicornWorker, UvicornH11Worker, GeventWorker):
    # imported on demand.
    return getattr(gunicorn_smartspawn, name)
