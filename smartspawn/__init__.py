"""The short name gunicorn users type: ``gunicorn -k smartspawn.Worker``."""
from gunicorn_smartspawn import (
    ThreadWorker, Worker, __version__, no_longer_fork_safe, prevent_fork,
)

__all__ = ["Worker", "ThreadWorker", "__version__", "prevent_fork", "no_longer_fork_safe"]
