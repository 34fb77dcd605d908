"""Fails loudly when something of gunicorn's that smartspawn patches, overrides or relies on
changes shape, in the gunicorn installed.

smartspawn runs on the gunicorn releases of host/versions.py (>=24.1,<28); CI runs this file
on the newest release of each major in that range (.ci/run). This is the alarm for anything
that moves inside it. Each pin names where smartspawn depends on it; what a release added
later in the range is pinned as present from that release on and absent before it, where
smartspawn detects it.
"""
import hashlib
import inspect
import json
import tomllib
from pathlib import Path

import gunicorn
import pytest
from gunicorn import sock, systemd, util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import KNOWN_SETTINGS
from gunicorn.workers import base, gthread, sync
from gunicorn.workers.workertmp import WorkerTmp

import smartspawn
from gunicorn_smartspawn.host import patches, versions
from gunicorn_smartspawn.worker import base as worker
from gunicorn_smartspawn.master.arbiter import SmartArbiter

# Every Arbiter method SmartArbiter overrides, with gunicorn's parameters.
OVERRIDDEN = {
    "run": ["self"], "start": ["self"], "init_signals": ["self"], "wakeup": ["self"],
    "wait_for_signals": ["self", "timeout"], "manage_workers": ["self"],
    "spawn_workers": ["self"], "spawn_worker": ["self"], "reap_workers": ["self"],
    "handle_hup": ["self"], "handle_usr1": ["self"], "setup": ["self", "app"],
    "stop": ["self", "graceful"], "kill_worker": ["self", "pid", "sig"],
    "murder_workers": ["self"],
}
# Arbiter methods smartspawn calls without overriding them.
CALLED = {"reload": ["self"]}
# What a release later than 24.1 added, that smartspawn detects: the release, and what stands
# in for it before.
SINCE = {
    # SmartArbiter.dirty_arbiter_pid = 0 (it calls kill_dirty_arbiter only when set).
    "dirty arbiter": (25, 0),
    # getattr(cfg, "http_protocols", ()) in OutOfBand.for_worker: no HTTP/2 before.
    "http_protocols": (25, 0),
    # patches.count: no counters to add to.
    "show stats counters": (25, 1),
    # patches.CONTROL_SOCKET: nothing to patch.
    "control socket": (25, 1),
    # patches.control_thread_stopped: the fork happens with the thread running, as
    # gunicorn's own forks do in 25.1.
    "control thread stopped at fork": (25, 2),
    # patches.wait_until_serving: a thread still starting is not stopped before.
    "control thread waited for at fork": (26, 1),
}


def params(func):
    return list(inspect.signature(func).parameters)


def since(feature):
    return gunicorn.version_info >= SINCE[feature]


needs_control_socket = pytest.mark.skipif(not since("control socket"),
                                          reason="gunicorn < 25.1: no control socket")


def test_gunicorn_is_in_the_supported_range():
    assert versions.unsupported() is None, versions.unsupported()
    assert versions.unsupported((23, 0, 0)) and versions.unsupported((28, 0, 0))
    assert versions.unsupported((24, 1, 0)) is None


def test_pyproject_requires_the_supported_range():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "gunicorn" + versions.SUPPORTED in pyproject["project"]["dependencies"]


def test_features_are_detected_in_the_releases_that_have_them():
    source = inspect.getsource(Arbiter)
    assert ("self.dirty_arbiter_pid = 0" in source) == since("dirty arbiter")
    assert ("self._stats = {" in source) == since("show stats counters")
    assert ("http_protocols" in {s.name for s in KNOWN_SETTINGS}) == since("http_protocols")
    assert patches.CONTROL_SOCKET == since("control socket")
    if patches.CONTROL_SOCKET:
        control = inspect.getsource(patches.ctl_server.ControlSocketServer)
        assert ("def _stop_for_fork(self)" in control) == since("control thread stopped at fork")
        assert (("self._ready = threading.Event()" in control)
                == since("control thread waited for at fork"))
        # What patches.wait_until_serving waits for.
        assert "self._server = await asyncio.start_unix_server(" in control
        assert "self._thread = threading.Thread(target=self._run_loop" in control


def test_every_overridden_arbiter_method_is_pinned():
    overriding = {name for name, value in vars(SmartArbiter).items() if callable(value)}
    assert overriding & set(dir(Arbiter)) == set(OVERRIDDEN)


def test_arbiter_methods_keep_their_signatures():
    for name, expected in {**OVERRIDDEN, **CALLED}.items():
        assert params(getattr(Arbiter, name)) == expected, name
    if since("dirty arbiter"):
        assert params(Arbiter.kill_dirty_arbiter) == ["self", "sig"]


def test_arbiter_state_smartspawn_relies_on():
    source = inspect.getsource(Arbiter)
    for needle in (
        "self.SIG_QUEUE = queue.SimpleQueue()", "WAKEUP_REQUEST", "self.WORKERS",
        "self.worker_age", "WORKER_BOOT_ERROR = 3", "APP_LOAD_ERROR = 4",
        # SmartArbiter.wait_for_signals is the loop's wait (gunicorn 23 had none).
        "self.wait_for_signals(timeout=",
    ):
        assert needle in source, needle
    if since("show stats counters"):
        assert "self._stats['workers_spawned'] += 1" in source  # patches.count
    # SmartArbiter.kill_worker sends SIG_DUMP before every SIGABRT: gunicorn sends one
    # only for WORKER TIMEOUT, in murder_workers.
    assert source.count("signal.SIGABRT") == 1
    assert "self.kill_worker(pid, signal.SIGABRT)" in inspect.getsource(Arbiter.murder_workers)
    # SmartArbiter.murder_workers leaves disabled workers out of self.WORKERS meanwhile.
    assert "list(self.WORKERS.items())" in inspect.getsource(Arbiter.murder_workers)


# gunicorn methods smartspawn copies (and adapts) rather than calls, by the sha256 of their
# source in each gunicorn release tested: a change in gunicorn's body must be read and
# carried into the copy before the pin moves.
# SmartArbiter.keep_worker_count: against its own target, not num_workers.
MANAGE_WORKERS = "518f2dd040ef680922df9748d37248e2ecf137e908e108f2eea199873a1dcce0"
# SmartArbiter.spawn_workers: the direct-spawning loop, with its pause.
SPAWN_WORKERS = "8fd09f6b3f3e5047e86d593ceed47df213ee5cbf86ddd793b98d9d4b39062b1a"
# SmartArbiter.reload_config: up to the spawn loop, which the preloader replaces (before
# 25.1, without the reload counter: patches.count).
RELOAD = "fec344d2f774ee32c4351ee15d64dcf16e28d10164ce72f82ff463c59124e41a"
RELOAD_24 = "f78dca16eec8580bdfc28d2e2803cbb8f671348d83f8f7cf4d14a8fbc6698370"
# worker.run_worker_process: the child branch, exit codes included. The releases differ
# in the counter (25.1), a blank line (25.3) and the SO_REUSEPORT check (27: Linux has it).
SPAWN_WORKER = {
    "24": "2e448c47bbbbbd8fe0ea5797e66b16453403c66b37dd3eec65548c2dca4eb788",
    "25.1": "0827386d7be635d66aa4bf307f951848d20069c6eb234ffa0c853bb76f70d5c7",
    "25.3": "980b34bd12b9516e8225a7a01c344cb3278aa553f9cd60dcbbc4cef7395b3694",
    "27": "6abc0d90b0b9f80b476a9aa8bbb47a7564f444f017384d1db8fb0ce36b916aea",
}


def copied(spawn_worker, reload=RELOAD):
    return {"manage_workers": MANAGE_WORKERS, "spawn_worker": SPAWN_WORKER[spawn_worker],
            "spawn_workers": SPAWN_WORKERS, "reload": reload}


COPIED = {
    "24.1.1": copied("24", RELOAD_24),
    "25.0.3": copied("24", RELOAD_24),
    "25.1.0": copied("25.1"),
    "25.3.0": copied("25.3"),
    "26.2.0": copied("25.3"),
    "27.0.1": copied("27"),
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


@needs_control_socket
def test_control_socket_methods_patched():
    # install() wraps these; show_workers' entries are matched by "pid".
    handlers = patches.ctl_handlers.CommandHandlers
    for func in (handlers.show_workers, handlers.show_stats, handlers.help):
        assert params(func) == ["self"]
    assert params(patches.ctl_server.ControlSocketServer._execute_command) == ["self", "parts"]
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
          "init_process": ["self"], "run": ["self"], "load_wsgi": ["self"],
          "handle_usr1": ["self", "sig", "frame"]}
WORKER_OVERRIDES = {
    sync.SyncWorker: {**COMMON, "handle": ["self", "listener", "client", "addr"],
                      "handle_request": ["self", "listener", "req", "client", "addr"]},
    gthread.ThreadWorker: {**COMMON, "handle_request": ["self", "req", "conn"],
                           "handle_quit": ["self", "sig", "frame"],
                           "set_accept_enabled": ["self", "enabled"],
                           "enqueue_req": ["self", "conn"],
                           "finish_request": ["self", "conn", "fs"]},
}


def test_the_sync_loop_looks_accept_and_wait_up_on_the_worker_at_each_turn():
    # While orders are pending, smartspawn's Worker puts its own accept and wait in the
    # instance's attributes (handle_command), in front of gunicorn's, which it calls.
    loop = inspect.getsource(sync.SyncWorker.run_for_one)
    assert "self.accept(listener)" in loop and "self.wait(timeout)" in loop
    assert params(sync.SyncWorker.accept) == ["self", "listener"]
    assert params(sync.SyncWorker.wait) == ["self", "timeout"]


def test_every_overridden_worker_method_is_pinned():
    for ours, theirs in ((worker.Worker, sync.SyncWorker),
                         (worker.ThreadWorker, gthread.ThreadWorker)):
        overriding = {name for cls in ours.__mro__[:ours.__mro__.index(theirs)]
                      for name, value in vars(cls).items() if callable(value)}
        pinned = WORKER_OVERRIDES[theirs]
        assert overriding & set(dir(theirs)) == set(pinned), theirs
        for name, expected in pinned.items():
            assert params(getattr(theirs, name)) == expected, (theirs, name)


def test_usr1_reopens_the_log_files_where_smartspawn_hands_faulthandler_the_new_one():
    # deadline.take_dump_signal runs after each of these (worker/base.py, asgi.py,
    # gevent_worker.py): faulthandler keeps the fd it was given.
    assert "self.log.reopen_files()" in inspect.getsource(base.Worker.handle_usr1)
    from gunicorn.workers import gasgi
    assert "self.log.reopen_files()" in inspect.getsource(gasgi.ASGIWorker.handle_usr1_signal)
    assert params(gasgi.ASGIWorker.handle_usr1_signal) == ["self"]


def test_the_gevent_worker_makes_its_servers_through_the_module_name_smartspawn_patches():
    # patches.note_gevent_servers replaces ggevent.StreamServer, and finds the worker
    # through the handler gunicorn gives it.
    pytest.importorskip("gevent")
    from gunicorn.workers import ggevent
    run = inspect.getsource(ggevent.GeventWorker.run)
    assert "hfun = partial(self.handle, s)" in run
    assert "server = StreamServer(s, handle=hfun" in run and "server.start()" in run
