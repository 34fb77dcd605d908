"""Fails loudly when something of gunicorn's that smartspawn patches, overrides or relies on
changes shape.

smartspawn pins gunicorn>=27,<28; this is the alarm for anything that moves inside it. Each
pin names where smartspawn depends on it.
"""
import hashlib
import inspect
import json

import gunicorn
from gunicorn import sock, systemd, util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.ctl import handlers as ctl_handlers
from gunicorn.ctl import server as ctl_server
from gunicorn.workers import base, gthread, sync
from gunicorn.workers.workertmp import WorkerTmp

import smartspawn
from gunicorn_smartspawn.host import patches
from gunicorn_smartspawn.worker import base as worker
from gunicorn_smartspawn.master.arbiter import SmartArbiter

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
    ):
        assert needle in source, needle


# gunicorn methods smartspawn copies (and adapts) rather than calls, by the sha256 of their
# source in each gunicorn release tested: a change in gunicorn's body must be read and
# carried into the copy before the pin moves.
COPIED = {
    "27.0.1": {
        # SmartArbiter.keep_worker_count: against its own target, not num_workers.
        "manage_workers": "518f2dd040ef680922df9748d37248e2ecf137e908e108f2eea199873a1dcce0",
        # worker.run_worker_process: the child branch, exit codes included.
        "spawn_worker": "6abc0d90b0b9f80b476a9aa8bbb47a7564f444f017384d1db8fb0ce36b916aea",
        # SmartArbiter.spawn_workers: the direct-spawning loop, with its pause.
        "spawn_workers": "8fd09f6b3f3e5047e86d593ceed47df213ee5cbf86ddd793b98d9d4b39062b1a",
        # SmartArbiter.reload_config: up to the spawn loop, which the preloader replaces.
        "reload": "fec344d2f774ee32c4351ee15d64dcf16e28d10164ce72f82ff463c59124e41a",
    },
}


def test_copied_arbiter_methods_are_unchanged():
    pins = COPIED.get(gunicorn.__version__)
    assert pins is not None, (
        "gunicorn %s: compare the methods in COPIED with smartspawn's copies, then pin "
        "their hashes" % gunicorn.__version__)
    for name, digest in pins.items():
        source = inspect.getsource(getattr(Arbiter, name))
        assert hashlib.sha256(source.encode()).hexdigest() == digest, (
            "gunicorn's Arbiter.%s changed: carry the change into smartspawn's copy" % name)


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


def test_gunicorn_says_ready_as_its_master_boots():
    # patches.gunicorn_ready_withheld drops exactly this message, for the length of
    # Arbiter.start(), by swapping the name systemd.sd_notify it calls.
    call = "systemd.sd_notify(%s, self.log)" % json.dumps(patches.GUNICORN_BOOTED)
    assert call in inspect.getsource(Arbiter.start)
    assert params(systemd.sd_notify) == ["state", "logger", "unset_environment"]
    with patches.gunicorn_ready_withheld():
        assert systemd.sd_notify is not patches.GUNICORN_SD_NOTIFY
    assert systemd.sd_notify is patches.GUNICORN_SD_NOTIFY


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
