"""gunicorn_smartspawn: smart spawning for gunicorn.

Turn it on with ``gunicorn -k smartspawn.Worker``. The package layout is the process tree:
``arbiter`` (the master; its refork and lifecycle policies in ``refork`` and
``lifecycle``), ``preloader`` (imports the app, forks workers), ``template`` (a warmed
worker that forks the next generation), ``worker`` (the workers); ``config`` holds the
settings, ``protocol`` the messages between them. For the application: ``prevent_fork``
and ``no_longer_fork_safe`` (``forkgate``).
"""
from gunicorn_smartspawn.forkgate import no_longer_fork_safe, prevent_fork
from gunicorn_smartspawn.worker import ThreadWorker, Worker

__version__ = "0.1.0"
__all__ = ["Worker", "ThreadWorker", "__version__", "prevent_fork", "no_longer_fork_safe"]
