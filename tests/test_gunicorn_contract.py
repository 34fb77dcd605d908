"""Fails loudly when something of gunicorn's that smartspawn patches, overrides or relies on
changes shape.

smartspawn pins gunicorn>=27,<28; this is the alarm for anything that moves inside it. Each
pin names where smartspawn depends on it.
"""
import inspect

import gunicorn
from gunicorn import sock, util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.ctl import handlers as ctl_handlers
from gunicorn.ctl import server as ctl_server
from gunicorn.workers import base, gthread, sync
from gunicorn.workers.workertmp import WorkerTmp

import smartspawn
from gunicorn_smartspawn import patches, worker
from gunicorn_smartspawn.arbiter import SmartArbiter

# Every Arbiter method SmartArbiter overrides, with gunicorn's parameters.
OVERRIDDEN = {
    "run": ["self"], "start": ["self"], "init_signals": ["self"], "wakeup": ["self"],
    "wait_for_signals": ["self", "timeout"], "manage_workers": ["self"],
    "spawn_workers": ["self"], "spawn_worker": ["self"], "reap_workers": ["self"],
    "handle_hup": ["self"], "handle_usr1": ["self"], "setup": ["self", "app"],
    "stop": ["self", "graceful"], "kill_worker": ["self", "pid", "sig"],
}
# Arbiter methods smartspawn calls without overriding them.
CALLED = {"reload": ["self"], "murder_workers": ["self"], "kill_dirty_arbiter": ["self", "sig"]}


def params(func):
    return list(inspect.signature(func).parameters)


def test_gunicorn_major_version_is_27():
    assert gunicorn.version_info[0] == 27


def test_every_overridden_arbiter_method_is_pinned():
    overriding = {name for name, value in vars(SmartArbiter).items() if callable(value)}
    assert overriding & set(dir(Arbiter)) == set(OVERRIDDEN)


def test_arbiter_methods_keep_their_signatures():
    for name, expected in {**OVERRIDDEN, **CALLED}.items():
        assert params(getattr(Arbiter, name)) == expected, name


def test_arbiter_state_smartspawn_relies_on():
    source = inspect.getsource(Arbiter)
    for needle in (
        "self.SIG_QUEUE", "WAKEUP_REQUEST", "self.WORKERS", "self._stats", "self.worker_age",
        "WORKER_BOOT_ERROR = 3", "APP_LOAD_ERROR = 4", "self.dirty_arbiter_pid",
        # lifecycle.outgoing_not_counted raises the attribute behind num_workers.
        "num_workers = property(_get_num_workers, _set_num_workers)", "self._num_workers",
        # manage_workers counts WORKERS against num_workers and kills the oldest beyond.
        "if len(self.WORKERS) < self.num_workers:",
    ):
        assert needle in source, needle


def test_run_and_wsgi_are_patched_once():
    smartspawn.Worker.setup()  # gunicorn calls it at every read of cfg.worker_class
    first_run, first_wsgi = Arbiter.run, BaseApplication.wsgi
    assert first_run is not patches.GUNICORN_RUN
    assert first_wsgi is not patches.GUNICORN_WSGI
    smartspawn.Worker.setup()
    assert (Arbiter.run, BaseApplication.wsgi) == (first_run, first_wsgi)


def test_control_socket_methods_patched():
    # install() wraps these; show_workers' entries are matched by "pid".
    for func in (ctl_handlers.CommandHandlers.show_workers,
                 ctl_handlers.CommandHandlers.show_stats, ctl_handlers.CommandHandlers.help):
        assert params(func) == ["self"]
    assert params(ctl_server.ControlSocketServer._execute_command) == ["self", "parts"]
    assert '"pid": pid' in inspect.getsource(patches.GUNICORN_SHOW_WORKERS)


def test_worker_construction_and_heartbeat():
    # patches.building_worker swaps the name base.WorkerTmp during Worker.__init__.
    assert params(base.Worker.__init__) == ["self", "age", "ppid", "sockets", "app",
                                            "timeout", "cfg", "log"]
    assert "self.tmp = WorkerTmp(cfg)" in inspect.getsource(base.Worker.__init__)
    assert base.WorkerTmp is WorkerTmp
    # HeartbeatFile replaces WorkerTmp.__init__ and relies on this attribute name.
    assert "self._tmp" in inspect.getsource(WorkerTmp)


def test_worker_internals_smartspawn_extends():
    # The privilege drop each worker does (the preloader has done it already).
    assert "util.set_owner_process(self.cfg.uid, self.cfg.gid" in inspect.getsource(
        base.Worker.init_process)
    assert params(util.set_owner_process) == ["uid", "gid", "initgroups"]
    assert "self.PIPE = os.pipe()" in inspect.getsource(base.Worker.init_process)
    assert params(sync.SyncWorker.handle) == ["self", "listener", "client", "addr"]
    assert params(gthread.ThreadWorker.set_accept_enabled) == ["self", "enabled"]
    assert params(gthread.ThreadWorker.enqueue_req) == ["self", "conn"]
    assert params(gthread.ThreadWorker.finish_request) == ["self", "conn", "fs"]
    assert "self.tpool = self.get_thread_pool()" in inspect.getsource(gthread.ThreadWorker)


def test_gthread_quit_handler_still_shuts_the_pool_down_in_the_handler():
    # smartspawn's ThreadWorker.handle_quit skips this (it deadlocks when QUIT lands
    # inside tpool.submit()); if gunicorn stops doing it, the override can go.
    assert "self.tpool.shutdown(wait=False)" in inspect.getsource(
        gthread.ThreadWorker.handle_quit)


def test_sockets_from_fds():
    # A template rebuilds its listeners, a reuse_port worker gets the master's, from fds.
    assert params(sock.BaseSocket.__init__) == ["self", "address", "conf", "log", "fd"]
    assert params(sock.create_sockets) == ["conf", "log", "fds"]
    assert params(sock.close_sockets) == ["listeners", "unlink"]


# Every gunicorn worker method smartspawn's worker classes override, with its parameters.
COMMON = {"init_signals": ["self"], "handle_exit": ["self", "sig", "frame"],
          "init_process": ["self"], "run": ["self"], "load_wsgi": ["self"]}
WORKER_OVERRIDES = {
    sync.SyncWorker: {**COMMON, "handle": ["self", "listener", "client", "addr"],
                      "handle_request": ["self", "listener", "req", "client", "addr"]},
    gthread.ThreadWorker: {**COMMON, "handle_request": ["self", "req", "conn"],
                           "handle_quit": ["self", "sig", "frame"],
                           "set_accept_enabled": ["self", "enabled"],
                           "enqueue_req": ["self", "conn"],
                           "finish_request": ["self", "conn", "fs"]},
}


def test_every_overridden_worker_method_is_pinned():
    for ours, theirs in ((worker.Worker, sync.SyncWorker),
                         (worker.ThreadWorker, gthread.ThreadWorker)):
        overriding = {name for cls in ours.__mro__[:ours.__mro__.index(theirs)]
                      for name, value in vars(cls).items() if callable(value)}
        pinned = WORKER_OVERRIDES[theirs]
        assert overriding & set(dir(theirs)) == set(pinned), theirs
        for name, expected in pinned.items():
            assert params(getattr(theirs, name)) == expected, (theirs, name)
