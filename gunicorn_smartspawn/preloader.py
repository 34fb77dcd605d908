"""The preloader: a child of the master that imports the app once and forks workers from it.

    master (never imports the app; child subreaper)
     ├─ preloader        imports the app, gc.collect() + gc.freeze(), waits for requests
     └─ worker 1..N      forked by the preloader, re-parented to the master

Both sides live here, as in CPython's forkserver: `start_preloader()` runs in the master
and returns a `PreloaderHandle`; `Preloader.run()` is the child. Each worker is made by a
double fork: the middle process exits at once, so the worker is orphaned and the kernel
re-parents it to the master (a child subreaper), which then reaps and supervises it
exactly as gunicorn supervises its own workers.
"""
import gc
import os
import signal
import sys
import time

from gunicorn import util
from gunicorn.errors import AppImportError

from gunicorn_smartspawn import _linux, protocol
from gunicorn_smartspawn.worker import (
    APP_LOAD_ERROR, WORKER_BOOT_ERROR, HeartbeatFile, exit_process, run_worker_process,
)

# A worker normally checks in within milliseconds of the double fork.
REPARENT_TIMEOUT = 2.0


class PreloaderHandle:
    """The master's view of one preloader process."""

    def __init__(self, pid, channel, generation, boot_timeout):
        self.pid = pid
        self.channel = channel
        self.generation = generation
        self.started_at = time.monotonic()
        self.boot_deadline = self.started_at + boot_timeout if boot_timeout else None
        self.ready = False
        self.retiring = False
        self.failure = None  # the BootFailed message, or why the master killed it

    def __repr__(self):
        return "preloader (pid: %s, gen=%s)" % (self.pid, self.generation)

    def request_spawn(self, age, heartbeat_fd):
        protocol.send(self.channel, protocol.SpawnWorker(age), [heartbeat_fd])

    def kill(self, sig):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass



def start_preloader(arbiter, generation, master_fds, boot_timeout):
    """Fork a preloader for `generation`; `master_fds` are closed in it."""
    master_end, child_end = protocol.channel_pair()
    pid = os.fork()
    if pid:
        child_end.close()
        master_end.setblocking(False)
        return PreloaderHandle(pid, master_end, generation, boot_timeout)

    code = 1
    try:
        master_end.close()
        for fd in master_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        code = Preloader(arbiter, child_end, generation).run()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Preloader:
    """The preloader process. Hooks receive it as `preloader`."""

    def __init__(self, arbiter, channel, generation):
        self.arbiter = arbiter
        self.app = arbiter.app
        self.cfg = arbiter.cfg
        self.log = arbiter.log
        self.channel = channel
        self.generation = generation
        self.master_pid = arbiter.pid
        self.pid = os.getpid()

    def run(self):
        """Load the app, then fork workers until the master goes; returns the exit code."""
        if not _linux.die_with_parent(self.master_pid):
            return 0
        self.init_signals()
        if not self.drop_privileges():
            return 0
        util._setproctitle("smartspawn preloader [%s] gen=%s"
                           % (self.arbiter.proc_name, self.generation))
        code = self.load_app()
        if code == 0:
            self.serve()
        return code

    def init_signals(self):
        signal.set_wakeup_fd(-1)  # the master's; the fd is closed here
        for sig in self.arbiter.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        # The master retires us by closing the channel (we exit on EOF) and the kernel
        # kills us with it (PDEATHSIG). INT and QUIT are ignored: a terminal sends them to
        # the whole process group, and the master decides. TERM stops us (an operator's
        # `kill`): the master then starts a new preloader.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, lambda *_: self.log.reopen_files())

    def drop_privileges(self):
        """Become gunicorn's `user`/`group` before any application code runs."""
        util.set_owner_process(self.cfg.uid, self.cfg.gid, initgroups=self.cfg.initgroups)
        # Workers inherit this identity; os.initgroups() would fail in them with EPERM.
        self.cfg.settings["initgroups"].set(False)
        return _linux.die_with_parent(self.master_pid)  # setuid() cleared it

    def load_app(self):
        started = time.monotonic()
        try:
            self.app.wsgi()
            self.cfg.on_preload(self)
        except AppImportError as exc:
            self.log.debug("Exception while loading the application", exc_info=True)
            print("%s" % exc, file=sys.stderr)
            return self.boot_failed(APP_LOAD_ERROR, str(exc))
        except BaseException as exc:
            self.log.exception("Exception in preloader while loading the application")
            return self.boot_failed(WORKER_BOOT_ERROR, "%s: %s" % (type(exc).__name__, exc))
        if self.cfg.gc_freeze:
            gc.collect()
            gc.freeze()
        protocol.send(self.channel,
                      protocol.PreloaderReady(self.pid, time.monotonic() - started))
        return 0

    def boot_failed(self, exit_code, reason):
        try:
            protocol.send(self.channel, protocol.BootFailed(exit_code, reason))
        except OSError:
            pass  # the master has gone; nobody to tell
        return exit_code

    def serve(self):
        while True:
            try:
                message, fds = protocol.recv(self.channel)
            except (EOFError, ConnectionError):
                return  # the master has gone
            if isinstance(message, protocol.SpawnWorker) and len(fds) == 1:
                self.fork_worker(message.age, fds[0])
            else:
                for fd in fds:
                    os.close(fd)
                self.log.error("Preloader: unexpected message %r", message)

    def fork_worker(self, age, heartbeat_fd):
        try:
            middle = os.fork()
        except OSError as exc:
            os.close(heartbeat_fd)
            protocol.send(self.channel, protocol.SpawnFailed(age, "fork: %s" % exc))
            return
        if middle == 0:
            self.run_middle(age, heartbeat_fd)
        os.close(heartbeat_fd)
        _, status = os.waitpid(middle, 0)
        if status != 0:
            protocol.send(self.channel, protocol.SpawnFailed(
                age, "second fork failed (wait status %s)" % status))

    def run_middle(self, age, heartbeat_fd):
        """The middle of the double fork: exits at once so the worker is re-parented."""
        code = 1
        try:
            if os.fork() == 0:
                self.run_worker(age, heartbeat_fd)
            code = 0
        finally:
            os._exit(code)

    def run_worker(self, age, heartbeat_fd):
        code = 1
        try:
            # First act, before anything can fail: the master must know this pid before
            # it can reap it.
            protocol.send(self.channel, protocol.WorkerSpawned(age, os.getpid()))
            self.channel.close()
            if self.wait_for_adoption():
                code = run_worker_process(self.arbiter, self.new_worker(age, heartbeat_fd))
        finally:
            exit_process(code)

    def wait_for_adoption(self):
        """Wait until the master is our parent, then die with it (SIGTERM: graceful)."""
        deadline = time.monotonic() + REPARENT_TIMEOUT
        while os.getppid() != self.master_pid:
            if time.monotonic() > deadline:
                self.log.error("Worker (pid: %s) was not re-parented to the master "
                               "(pid: %s); exiting", os.getpid(), self.master_pid)
                return False
            time.sleep(0.0001)
        # Set only now: set earlier, the middle process's exit would have sent it.
        return _linux.die_with_parent(self.master_pid, signal.SIGTERM)

    def new_worker(self, age, heartbeat_fd):
        arbiter = self.arbiter
        worker = arbiter.worker_class(age, self.master_pid, arbiter.LISTENERS, self.app,
                                      arbiter.timeout / 2.0, self.cfg, self.log)
        worker.tmp.close()  # a new file nobody watches; the master watches heartbeat_fd
        worker.tmp = HeartbeatFile(heartbeat_fd)
        worker.spawned_from = "preloader"
        worker.spawner_pid = self.pid
        worker.generation = self.generation
        return worker
