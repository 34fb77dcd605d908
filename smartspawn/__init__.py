"""The short name gunicorn users type: ``gunicorn -k smartspawn.Worker``."""
from gunicorn_smartspawn import ThreadWorker, Worker, __version__

__all__ = ["Worker", "ThreadWorker", "__version__"]
