"""Fails loudly when a gunicorn method smartspawn patches or extends changes shape.

smartspawn pins gunicorn>=27,<28; this is the alarm for anything that moves inside it.
"""
import inspect

import gunicorn
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.workertmp import WorkerTmp

import smartspawn
from gunicorn_smartspawn import arbiter

EXTENDED = {
    "start": ["self"], "init_signals": ["self"], "wakeup": ["self"],
    "wait_for_signals": ["self", "timeout"], "manage_workers": ["self"],
    "spawn_workers": ["self"], "spawn_worker": ["self"], "reap_workers": ["self"],
    "handle_hup": ["self"], "setup": ["self", "app"], "stop": ["self", "graceful"],
    "reload": ["self"], "kill_worker": ["self", "pid", "sig"], "murder_workers": ["self"],
}


def test_gunicorn_major_version_is_27():
    assert gunicorn.version_info[0] == 27


def test_extended_arbiter_methods_keep_their_signatures():
    for name, params in EXTENDED.items():
        assert list(inspect.signature(getattr(Arbiter, name)).parameters) == params, name


def test_arbiter_state_smartspawn_relies_on():
    source = inspect.getsource(Arbiter)
    for needle in ("self.SIG_QUEUE", "WAKEUP_REQUEST", "self.WORKERS", "self._stats",
                   "self.worker_age", "WORKER_BOOT_ERROR = 3", "APP_LOAD_ERROR = 4"):
        assert needle in source, needle


def test_run_and_wsgi_are_patched_once():
    smartspawn.Worker.setup()  # gunicorn calls it at every read of cfg.worker_class
    first_run, first_wsgi = Arbiter.run, BaseApplication.wsgi
    assert first_run is not arbiter.GUNICORN_RUN
    assert first_wsgi is not arbiter.GUNICORN_WSGI
    smartspawn.Worker.setup()
    assert (Arbiter.run, BaseApplication.wsgi) == (first_run, first_wsgi)


def test_workertmp_keeps_its_file_in_tmp():
    # HeartbeatFile replaces WorkerTmp.__init__ and relies on this attribute name.
    assert "self._tmp" in inspect.getsource(WorkerTmp)


def test_gthread_quit_handler_still_shuts_the_pool_down_in_the_handler():
    # smartspawn's ThreadWorker.handle_quit skips this (it deadlocks when QUIT lands
    # inside tpool.submit()); if gunicorn stops doing it, the override can go.
    from gunicorn.workers.gthread import ThreadWorker
    assert "self.tpool.shutdown(wait=False)" in inspect.getsource(ThreadWorker.handle_quit)
