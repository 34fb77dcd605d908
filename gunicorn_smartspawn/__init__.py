"""gunicorn_smartspawn: smart spawning for gunicorn.

Turn it on with ``gunicorn -k smartspawn.Worker`` (or ``smartspawn.ThreadWorker``, and the
event-loop workers ``smartspawn.ASGIWorker``, ``smartspawn.UvicornWorker``,
``smartspawn.UvicornH11Worker`` and ``smartspawn.GeventWorker``). The subpackages are the
process tree, each named for the process its code runs in:

- ``master``: gunicorn's arbiter extended (``arbiter``), the table of its children
  (``fleet``), the policies (``refork``, ``lifecycle``) and what they decide
  (``actions``);
- ``spawner``: the preloader and a refork's template, the processes that fork workers;
- ``worker``: the worker classes (``base``: sync and gthread; ``asgi``,
  ``asgi_uvicorn``, ``gevent_worker``), out-of-band work and the fork gates;
- ``forksafety``: the check before each fork, the library tables, the immortal heap;
- ``host``: every change made to gunicorn (``patches``), the gunicorn releases it runs on
  (``versions``);
- ``shared``: what every process shares (``protocol``, ``counters``, ``config``,
  ``state``, ``hookstate``);
- ``cli``: the ``smartspawn`` command.

For the application: ``prevent_fork`` and ``no_longer_fork_safe`` (``worker.forkgate``),
``extend_deadline`` (``worker.deadline``).
"""
import importlib

from gunicorn_smartspawn.host import patches, versions
from gunicorn_smartspawn.master.arbiter import SmartArbiter
from gunicorn_smartspawn.worker import base as worker
from gunicorn_smartspawn.worker.deadline import extend_deadline
from gunicorn_smartspawn.worker.forkgate import no_longer_fork_safe, prevent_fork

__version__ = "0.1.0"
__all__ = ["Worker", "ThreadWorker", "ASGIWorker", "UvicornWorker", "UvicornH11Worker",
           "GeventWorker", "__version__", "prevent_fork", "no_longer_fork_safe",
           "extend_deadline"]

# The event-loop workers: name -> (module, what -k gets). Their modules import gevent or
# uvicorn, so each is imported when asked for (gunicorn's -k), not with the package.
EVENT_LOOP_WORKERS = {
    "ASGIWorker": ("asgi", "``-k smartspawn.ASGIWorker``: gunicorn's asgi worker."),
    "UvicornWorker": ("asgi_uvicorn", "``-k smartspawn.UvicornWorker``: uvicorn-worker's "
                      "UvicornWorker (the ``uvicorn`` extra)."),
    "UvicornH11Worker": ("asgi_uvicorn", "``-k smartspawn.UvicornH11Worker``: uvicorn-worker's "
                         "UvicornH11Worker, h11 and asyncio (the ``uvicorn`` extra)."),
    "GeventWorker": ("gevent_worker", "``-k smartspawn.GeventWorker``: gunicorn's gevent "
                     "worker."),
}


class _InstallsSmartspawn:
    @classmethod
    def setup(cls):
        # gunicorn calls this each time it reads cfg.worker_class (at start, and at every
        # HUP), in the master before its arbiter runs: the one moment a -k plugin gets.
        versions.refuse_unsupported()
        patches.install(SmartArbiter)


class Worker(_InstallsSmartspawn, worker.Worker):
    """``-k smartspawn.Worker``: gunicorn's sync worker (gthread with ``--threads N``)."""


class ThreadWorker(_InstallsSmartspawn, worker.ThreadWorker):
    """``-k smartspawn.ThreadWorker``: gunicorn's gthread worker."""


def __getattr__(name: str) -> type:
    if name not in EVENT_LOOP_WORKERS:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    module, doc = EVENT_LOOP_WORKERS[name]
    base = getattr(importlib.import_module("gunicorn_smartspawn.worker." + module), name)
    cls = type(name, (_InstallsSmartspawn, base), {"__module__": __name__, "__doc__": doc})
    globals()[name] = cls
    return cls
