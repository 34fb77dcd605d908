"""Every change smartspawn makes to gunicorn, in one place.

gunicorn has no supported way to replace its Arbiter. It imports the worker class inside
Arbiter.setup(), and calls the class's setup(), which calls `install()` (see the package's
``__init__``); that patches these gunicorn methods, once, and nothing else:

- ``Arbiter.run``: switches the live arbiter to SmartArbiter when the worker class is
  smartspawn's, then runs gunicorn's own main loop;
- ``BaseApplication.wsgi``: returns None in the master when smart spawning is on, so
  ``--preload`` never imports the app there (the preloader does);
- the control socket's ``CommandHandlers.show_workers`` and ``show_stats`` (they add
  smartspawn's fields), ``CommandHandlers.help`` and
  ``ControlSocketServer._execute_command`` (add ``refork`` and ``worker <verb> PID``:
  ``dump``), where gunicorn has a control socket (25.1 and later: `CONTROL_SOCKET`).

And gunicorn's own counters for ``show stats`` (`count`), where it keeps them.

And the live configuration, through `override_setting` alone: a setting this server cannot
honour (turned off with a warning), and `initgroups` once the preloader has done it.

And for the length of one call, in a process forked from a spawner (`building_worker`):

- ``gunicorn.workers.base.WorkerTmp``, the name ``Worker.__init__`` looks up to make a
  worker's heartbeat file.

And for the length of a smart server's ``Arbiter.start()`` (`gunicorn_ready_withheld`):
``gunicorn.systemd.sd_notify``, so that gunicorn's early ``READY=1`` is not sent.

And, with ``-k smartspawn.GeventWorker``, ``gunicorn.workers.ggevent.StreamServer``
(`note_gevent_servers`), so that the worker knows its servers.

And around each fork smartspawn makes in the master (`control_thread_stopped`): the
control socket server's thread, through the methods gunicorn's own at-fork handlers call.

And reads one private function: ``gunicorn.sock._sock_type`` (`bind_once`).

tests/test_gunicorn_contract.py pins each of these, and what smartspawn relies on; the
last two, tests/unit/test_host_binding.py.
"""
import contextlib
import os
import sys
import time

from gunicorn import sock, systemd
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import ConfigError
from gunicorn.workers import base

from gunicorn_smartspawn.shared import _linux
from gunicorn_smartspawn.shared.config import install_settings
from gunicorn_smartspawn.worker.base import SmartWorkerMixin

try:  # gunicorn 25.1 and later
    from gunicorn.ctl import handlers as ctl_handlers
    from gunicorn.ctl import server as ctl_server
except ImportError:
    ctl_handlers = ctl_server = None

CONTROL_SOCKET = ctl_handlers is not None
GUNICORN_RUN = Arbiter.run
GUNICORN_WSGI = BaseApplication.wsgi
if CONTROL_SOCKET:
    GUNICORN_SHOW_WORKERS = ctl_handlers.CommandHandlers.show_workers
    GUNICORN_SHOW_STATS = ctl_handlers.CommandHandlers.show_stats
    GUNICORN_HELP = ctl_handlers.CommandHandlers.help
    GUNICORN_EXECUTE = ctl_server.ControlSocketServer._execute_command
GUNICORN_SD_NOTIFY = systemd.sd_notify
# What Arbiter.start() tells systemd once the master has bound its sockets.
GUNICORN_BOOTED = "READY=1\nSTATUS=Gunicorn arbiter booted"


def install(smart_arbiter):
    """Patch gunicorn once; safe to call again (gunicorn calls Worker.setup() often).

    `smart_arbiter`: the Arbiter subclass a smartspawn server's arbiter becomes.
    """
    if Arbiter.run is not GUNICORN_RUN:
        return
    master_pid = os.getpid()

    def run(self):
        if issubclass(self.worker_class, SmartWorkerMixin):
            self.__class__ = smart_arbiter
            return self.run()
        return GUNICORN_RUN(self)

    def wsgi(self):
        if os.getpid() == master_pid and smart_spawning_requested(self.cfg):
            return None  # the preloader imports the app, never the master
        return GUNICORN_WSGI(self)

    Arbiter.run = run
    BaseApplication.wsgi = wsgi
    if CONTROL_SOCKET:
        patch_control_socket(smart_arbiter)
    if "gunicorn.workers.ggevent" in sys.modules:  # -k smartspawn.GeventWorker imported it
        note_gevent_servers()


def note_gevent_servers():
    """gunicorn's gevent worker keeps the StreamServers its run() makes in a local list:
    each one started tells its worker (GeventWorker.note_server), so that `worker
    disable` can stop them accepting. Its handler is gunicorn's partial(worker.handle,
    listener) (pinned in the contract test)."""
    from gunicorn.workers import ggevent

    class NotedStreamServer(ggevent.StreamServer):
        def start(self):
            super().start()
            worker = getattr(getattr(self.handle, "func", None), "__self__", None)
            note = getattr(worker, "note_server", None)
            if note is not None:
                note(self)

    ggevent.StreamServer = NotedStreamServer


def patch_control_socket(smart_arbiter):
    # The control socket's thread calls these; they read master state, as gunicorn's do.
    def show_workers(self):
        result = GUNICORN_SHOW_WORKERS(self)
        if isinstance(self.arbiter, smart_arbiter):
            for entry in result["workers"]:
                entry.update(self.arbiter.worker_fields(entry["pid"]))
        return result

    def show_stats(self):
        result = GUNICORN_SHOW_STATS(self)
        if isinstance(self.arbiter, smart_arbiter):
            result.update(self.arbiter.smartspawn_stats())
        return result

    def help_(self):
        result = GUNICORN_HELP(self)
        if isinstance(self.arbiter, smart_arbiter):
            result["commands"]["refork"] = "Re-fork every worker from a warmed one (URG)"
            result["commands"]["worker disable <pid>"] = (
                "Take a worker out of rotation; another is spawned in its place")
            result["commands"]["worker enable <pid>"] = "Put a disabled worker back"
            result["commands"]["worker dump <pid>"] = ("Write a worker's stacks (every "
                                                       "thread) to the error log")
        return result

    def execute_command(self, parts):
        if isinstance(self.arbiter, smart_arbiter) and parts:
            if parts[0].lower() == "refork":
                return self.arbiter.queue_refork()
            if (parts[0].lower() == "worker" and len(parts) > 1
                    and parts[1].lower() in smart_arbiter.WORKER_VERBS):
                return self.arbiter.queue_worker_command(parts[1].lower(),
                                                         worker_pid(parts[1:]))
        return GUNICORN_EXECUTE(self, parts)

    ctl_handlers.CommandHandlers.show_workers = show_workers
    ctl_handlers.CommandHandlers.show_stats = show_stats
    ctl_handlers.CommandHandlers.help = help_
    ctl_server.ControlSocketServer._execute_command = execute_command


def worker_pid(args):
    """`dump 123` -> 123; a ValueError (gunicorn's "Invalid argument: ...") otherwise."""
    if len(args) != 2 or not args[1].isdigit():
        raise ValueError("worker %s takes one worker pid: worker %s PID"
                         % (args[0].lower(), args[0].lower()))
    return int(args[1])


def smart_spawning_requested(cfg):
    try:
        install_settings(cfg)
    except ConfigError:
        return True  # SmartArbiter.run() reports it before anything starts
    return (cfg.spawn_method == "smart" and not cfg.reload
            and _linux.smart_spawn_unsupported() is None)


def count(arbiter, stat):
    """Add one to gunicorn's `stat` counter of ``show stats``, where gunicorn keeps one
    (25.1 and later), as its own spawn_worker() and reload() do."""
    stats = getattr(arbiter, "_stats", None)
    if stats is not None:
        stats[stat] += 1


def override_setting(cfg, name, value):
    """Set gunicorn setting `name` of the live `cfg` to `value`, as a config file would."""
    cfg.settings[name].set(value)


@contextlib.contextmanager
def building_worker(heartbeat):
    """Within: gunicorn's Worker.__init__ takes `heartbeat` as the worker's heartbeat file
    instead of making a WorkerTmp in `worker_tmp_dir`.

    A spawner's child must not make one: the master watches the file it made and sent,
    and with `user` set this process may not even write there. Used in a process just
    forked from a spawner, which has only this thread.
    """
    made = base.WorkerTmp
    base.WorkerTmp = lambda cfg: heartbeat
    try:
        yield
    finally:
        base.WorkerTmp = made


@contextlib.contextmanager
def gunicorn_ready_withheld():
    """Within: gunicorn's Arbiter.start() does not tell systemd it is ready.

    It says so once the master has bound its sockets; a smart master has not started the
    preloader yet, so nothing could serve for as long as the app takes to import. The
    master says READY=1 itself once a worker serves (master/notify.py). Anything else
    sent meanwhile (an on_starting or when_ready hook's own sd_notify) goes through.
    """
    def sd_notify(state, logger, unset_environment=False):
        if state != GUNICORN_BOOTED:
            GUNICORN_SD_NOTIFY(state, logger, unset_environment)

    systemd.sd_notify = sd_notify
    try:
        yield
    finally:
        systemd.sd_notify = GUNICORN_SD_NOTIFY


@contextlib.contextmanager
def control_thread_stopped(arbiter):
    """Within: the control socket server's thread is stopped; it starts again on exit.

    gunicorn's own at-fork handlers stop it before a fork and start it again in
    after_in_parent, but CPython 3.12+ counts the threads for its "This process is
    multi-threaded, use of fork() may lead to deadlocks in the child" warning after those
    handlers ran: the new thread is counted. Stopped here, the handlers find it stopped
    and leave it so, and it starts again only once os.fork() has returned.
    """
    server = getattr(arbiter, "_control_server", None)
    # gunicorn 25.1 forks its own workers with the thread running (25.2 stops it): so do
    # smartspawn's forks there.
    running = (server is not None and server._running
               and hasattr(server, "_stop_for_fork"))
    if running:
        if not hasattr(server, "_ready"):
            wait_until_serving(server)
        server._stop_for_fork()
    try:
        yield
    finally:
        # Not in the child, which leaves the block too when the fork is its last line.
        if running and os.getpid() == arbiter.pid:
            server._was_running_before_fork = True
            server._restart_after_fork()


def wait_until_serving(server, timeout=2.0):
    """Wait (up to `timeout`) for a control thread just started to serve.

    gunicorn 25.2 to 26.0 skip the shutdown of a thread still starting, and the fork
    happens with it running (gunicorn's #3648); 26.1 waits for it (``_ready``), as here.
    """
    deadline = time.monotonic() + timeout
    while (server._server is None and server._thread is not None
           and server._thread.is_alive() and time.monotonic() < deadline):
        time.sleep(0.005)


def bind_once(cfg, log):
    """The listening sockets of `cfg.address`, each bound once; OSError if one cannot be.

    gunicorn's create_sockets retries each address for 5 s and then calls sys.exit(1):
    fine at start, but in the master's loop (a reuse_port worker's seat) it would end the
    master. Addresses given as file descriptors are not bound here: create_sockets only
    wraps them.
    """
    if any(isinstance(address, int) for address in cfg.address):
        return sock.create_sockets(cfg, log)
    listeners = []
    try:
        for address in cfg.address:
            listeners.append(sock._sock_type(address)(address, cfg, log))
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners
