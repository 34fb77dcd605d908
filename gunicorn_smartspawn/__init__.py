"""gunicorn_smartspawn: smart spawning for gunicorn.

Turn it on with ``gunicorn -k smartspawn.Worker``. The package layout is the process tree:
``arbiter`` (the master), ``preloader`` (imports the app, forks workers), ``worker``
(the workers); ``config`` holds the settings, ``protocol`` the messages between them.
"""
from gunicorn_smartspawn.forkgate import no_longer_fork_safe, prevent_fork
from gunicorn_smartspawn.worker import ThreadWorker, Worker

__version__ = "0.1.0"
__all__ = ["Worker", "ThreadWorker", "__version__", "prevent_fork", "no_longer_fork_safe"]
