"""gunicorn_smartspawn: smart spawning for gunicorn.

Turn it on with ``gunicorn -k smartspawn.Worker`` (or ``smartspawn.ThreadWorker``, and the
event-loop workers ``smartspawn.ASGIWorker``, ``smartspawn.UvicornWorker`` and
``smartspawn.GeventWorker``). The package layout is the process tree:

- the master: ``arbiter`` (gunicorn's loop), ``fleet`` (the table of its children),
  ``refork`` and ``lifecycle`` (the policies, which yield ``actions``), ``backoff``;
  ``hookstate`` (what pre_fork leaves for a worker); ``patches``: every change made to
  gunicorn;
- ``preloader`` (imports the app, forks workers) and ``template`` (a warmed worker that
  forks the next generation), both ``spawner``\\ s;
- ``worker``: the workers; ``asgi``, ``asgi_uvicorn`` and ``gevent_worker``: the
  event-loop ones.

``config`` holds the settings, ``protocol`` the messages between the processes. For the
application: ``prevent_fork`` and ``no_longer_fork_safe`` (``forkgate``).
"""
import importlib

from gunicorn_smartspawn import patches, worker
from gunicorn_smartspawn.arbiter import SmartArbiter
from gunicorn_smartspawn.forkgate import no_longer_fork_safe, prevent_fork

__version__ = "0.1.0"
__all__ = ["Worker", "ThreadWorker", "ASGIWorker", "UvicornWorker", "GeventWorker",
           "__version__", "prevent_fork", "no_longer_fork_safe"]

# The event-loop workers: name -> (module, what -k gets). Their modules import gevent or
# uvicorn, so each is imported when asked for (gunicorn's -k), not with the package.
EVENT_LOOP_WORKERS = {
    "ASGIWorker": ("asgi", "``-k smartspawn.ASGIWorker``: gunicorn's asgi worker."),
    "UvicornWorker": ("asgi_uvicorn", "``-k smartspawn.UvicornWorker``: uvicorn-worker's "
                      "UvicornWorker (the ``uvicorn`` extra)."),
    "GeventWorker": ("gevent_worker", "``-k smartspawn.GeventWorker``: gunicorn's gevent "
                     "worker."),
}


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


def __getattr__(name):
    if name not in EVENT_LOOP_WORKERS:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    module, doc = EVENT_LOOP_WORKERS[name]
    base = getattr(importlib.import_module("gunicorn_smartspawn." + module), name)
    cls = type(name, (_InstallsSmartspawn, base), {"__module__": __name__, "__doc__": doc})
    globals()[name] = cls
    return cls
