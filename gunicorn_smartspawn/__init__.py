"""gunicorn_smartspawn: smart spawning for gunicorn.

Turn it on with ``gunicorn -k smartspawn.Worker``. The package layout is the process tree:

- the master: ``arbiter`` (gunicorn's loop) and the parts that own its state:
  ``spawnerpool`` (preloader, template, their channels), ``workertable`` (spawns in
  flight, counter slots, channels), ``refork`` and ``lifecycle`` (the policies);
  ``patches``: every change made to gunicorn;
- ``preloader`` (imports the app, forks workers) and ``template`` (a warmed worker that
  forks the next generation), both ``spawner``\\ s;
- ``worker``: the workers.

``config`` holds the settings, ``protocol`` the messages between the processes. For the
application: ``prevent_fork`` and ``no_longer_fork_safe`` (``forkgate``).
"""
from gunicorn_smartspawn import patches, worker
from gunicorn_smartspawn.arbiter import SmartArbiter
from gunicorn_smartspawn.forkgate import no_longer_fork_safe, prevent_fork

__version__ = "0.1.0"
__all__ = ["Worker", "ThreadWorker", "__version__", "prevent_fork", "no_longer_fork_safe"]


class _InstallsSmartspawn:
    @classmethod
    def setup(cls):
        # gunicorn calls this each time it reads cfg.worker_class (at start, and at every
        # HUP), in the master before its arbiter runs: the one moment a -k plugin gets.
        patches.install(SmartArbiter)


class Worker(_InstallsSmartspawn, worker.Worker):
    """``-k smartspawn.Worker``: gunicorn's sync worker (gthread with ``--threads N``)."""


class ThreadWorker(_InstallsSmartspawn, worker.ThreadWorker):
    """``-k smartspawn.ThreadWorker``: gunicorn's gthread worker."""
