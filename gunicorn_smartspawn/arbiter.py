"""The master: gunicorn's Arbiter, extended to spawn workers from a preloader.

gunicorn has no supported way to replace its Arbiter. It imports the worker class inside
Arbiter.setup(), so `install()` (run from Worker.setup()) patches two gunicorn methods,
once, and nothing else:

- ``Arbiter.run``: switches the live arbiter to SmartArbiter when the worker class is
  smartspawn's, then runs gunicorn's own main loop;
- ``BaseApplication.wsgi``: returns None in the master when smart spawning is on, so
  ``--preload`` never imports the app there (the preloader does).

SmartArbiter overrides, each extending the gunicorn method of the same name: start,
init_signals, wakeup, wait_for_signals (also reads the preloaders' channels),
manage_workers, spawn_workers, spawn_worker, reap_workers, handle_hup, setup, stop.
The test suite checks that these gunicorn methods still exist with the signatures
assumed here (tests/test_gunicorn_contract.py).
"""
import os
import queue
import select
import signal
import sys
import time

from gunicorn import sock, util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import ConfigError, HaltServer
from gunicorn.pidfile import Pidfile

from gunicorn_smartspawn import _linux, protocol
from gunicorn_smartspawn.config import install_settings
from gunicorn_smartspawn.preloader import start_preloader
from gunicorn_smartspawn.worker import (
    APP_LOAD_ERROR, WORKER_BOOT_ERROR, SmartWorkerMixin, exit_process, run_worker_process,
    worker_class_for,
)

GUNICORN_RUN = Arbiter.run
GUNICORN_WSGI = BaseApplication.wsgi

# How long a spawn request may go unanswered before the preloader is deemed stuck.
SPAWN_TIMEOUT = 5.0
# Restart delays for a preloader that keeps failing after the first boot (seconds).
RESTART_BACKOFF = (0, 1, 2, 5, 10, 30)


def install():
    """Patch gunicorn once; safe to call again (gunicorn calls Worker.setup() often)."""
    if Arbiter.run is not GUNICORN_RUN:
        return
    master_pid = os.getpid()

    def run(self):
        if issubclass(self.worker_class, SmartWorkerMixin):
            self.__class__ = SmartArbiter
        return self.run() if isinstance(self, SmartArbiter) else GUNICORN_RUN(self)

    def wsgi(self):
        if os.getpid() == master_pid and smart_spawning_requested(self.cfg):
            return None  # the preloader imports the app, never the master
        return GUNICORN_WSGI(self)

    Arbiter.run = run
    BaseApplication.wsgi = wsgi


def smart_spawning_requested(cfg):
    try:
        install_settings(cfg)
    except ConfigError:
        return True  # SmartArbiter.run() reports it before anything starts
    return cfg.spawn_method == "smart" and not cfg.reload


class SmartArbiter(Arbiter):
    """gunicorn's Arbiter with smart spawning. See the module docstring."""

    def run(self):
        try:
            settings_warnings = install_settings(self.cfg)
        except ConfigError as exc:
            print("\nError: %s\n" % exc, file=sys.stderr)
            sys.stderr.flush()
            sys.exit(1)
        for warning in settings_warnings:
            self.log.warning(warning)
        self.worker_class = worker_class_for(self.cfg)
        self.generation = 1
        self.preloaders = []          # every live preloader handle (channel still open)
        self.preloader = None         # the one that serves spawn requests
        self.next_preloader = None    # booting after a HUP, for generation + 1
        self.ever_ready = False
        self.restart_failures = 0
        self.restart_at = None
        self.pending = {}             # age -> worker record awaiting WorkerSpawned
        self.helper_pids = set()      # preloaders not yet reaped
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.smart = self.choose_smart_spawning()
        return GUNICORN_RUN(self)

    def choose_smart_spawning(self):
        if self.cfg.spawn_method == "direct":
            return False
        why = _linux.smart_spawn_unsupported()
        if why is None and self.cfg.reload:
            why = "--reload restarts workers that import the app themselves"
        if why is None:
            try:
                _linux.become_subreaper()
            except OSError as exc:
                why = "prctl(PR_SET_CHILD_SUBREAPER) failed: %s" % exc
        if why:
            self.log.warning("smartspawn: falling back to direct spawning: %s", why)
            return False
        if self.cfg.preload_app:
            self.log.warning("smartspawn: --preload is not needed with spawn_method = "
                             "'smart': the preloader process loads the app, not the master")
        return True

    # -- gunicorn hooks into the main loop -------------------------------------------

    def start(self):
        super().start()
        if self.smart:
            self.preloader = self.start_preloader(self.generation)

    def init_signals(self):
        super().init_signals()
        # Wakes the select() in wait_for_signals(); gunicorn's handlers only queue.
        signal.set_wakeup_fd(self._wake_w)

    def wakeup(self):
        super().wakeup()
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # already awake

    def wait_for_signals(self, timeout=1.0):
        """Wait for a signal or a preloader message; returns the signals."""
        channels = [p.channel for p in self.preloaders]
        readable, _, _ = select.select([self._wake_r, *channels], [], [], timeout)
        if self._wake_r in readable:
            while True:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    break
        self.read_channels([p for p in self.preloaders if p.channel in readable])
        signals = []
        while True:
            try:
                sig = self.SIG_QUEUE.get_nowait()
            except queue.Empty:
                return signals
            if sig != self.WAKEUP_REQUEST:
                signals.append(sig)

    def manage_workers(self):
        if self.smart:
            self.manage_preloaders()
        super().manage_workers()

    def spawn_workers(self):
        if not self.smart:
            return super().spawn_workers()
        if self.preloader is None or not self.preloader.ready:
            return None  # booting: spawning starts when it reports ready
        # No random sleep between spawns as in gunicorn: a fork is cheap and imports nothing.
        for _ in range(self.num_workers - len(self.WORKERS) - len(self.pending)):
            self.spawn_worker()
        return None

    def spawn_worker(self):
        self.worker_age += 1
        worker = self.worker_class(self.worker_age, self.pid, self.LISTENERS, self.app,
                                   self.timeout / 2.0, self.cfg, self.log)
        worker.generation = self.generation
        if not self.smart:
            return self.spawn_direct(worker)
        preloader = self.preloader
        worker.spawned_from = "preloader"
        worker.spawner_pid = preloader.pid
        worker.generation = preloader.generation
        self.cfg.pre_fork(self, worker)
        worker.spawn_deadline = time.monotonic() + SPAWN_TIMEOUT
        self.pending[worker.age] = worker
        try:
            preloader.request_spawn(worker.age, worker.tmp.fileno())
        except OSError as exc:
            # The preloader is gone; its EOF is handled by read_channels().
            self.log.error("Spawn request to %r failed: %s", preloader, exc)
            self.forget_pending(worker.age)
        return None

    def spawn_direct(self, worker):
        """gunicorn's own spawn: fork from the master, the worker imports the app."""
        self.cfg.pre_fork(self, worker)
        pid = os.fork()
        if pid:
            worker.pid = pid
            self.WORKERS[pid] = worker
            self._stats["workers_spawned"] += 1
            return pid
        code = 1
        try:
            for sibling in self.WORKERS.values():
                sibling.tmp.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            code = run_worker_process(self, worker)
        finally:
            exit_process(code)

    def reap_workers(self):
        if self.smart:
            # A worker's WorkerSpawned is written before it can exit: read it first, so
            # that gunicorn's reaper knows the pid.
            self.read_channels(list(self.preloaders))
            self.reap_preloaders()
        super().reap_workers()

    def handle_hup(self):
        if not self.smart:
            return super().handle_hup()
        self.log.info("Hang up: %s", self.master_name)
        if not self.reload_config():
            return None
        if self.next_preloader is not None:
            self.log.info("HUP supersedes the reload already booting in %r",
                          self.next_preloader)
            self.retire(self.next_preloader)
        self.next_preloader = self.start_preloader(self.generation + 1)
        if self.dirty_arbiter_pid:
            self.kill_dirty_arbiter(signal.SIGHUP)
        return None

    def setup(self, app):
        # Runs on HUP only: the first setup() ran before the switch to this class.
        super().setup(app)
        for warning in install_settings(self.cfg):
            self.log.warning(warning)
        self.worker_class = worker_class_for(self.cfg)

    def stop(self, graceful=True):
        if not self.smart:
            return super().stop(graceful)
        self.stopping = True
        self.read_channels(list(self.preloaders))  # workers forked just now stop too
        for preloader in list(self.preloaders):
            self.retire(preloader)
        super().stop(graceful)
        self.wait_for_preloaders(deadline=time.monotonic() + 2.0)
        return None

    # -- preloaders -------------------------------------------------------------------

    def start_preloader(self, generation):
        boot_timeout = self.cfg.preloader_boot_timeout or self.cfg.timeout or None
        preloader = start_preloader(self, generation, self.master_only_fds(), boot_timeout)
        self.preloaders.append(preloader)
        self.helper_pids.add(preloader.pid)
        self.log.info("Started %r", preloader)
        return preloader

    def retire(self, preloader):
        preloader.retiring = True
        if preloader.ready:
            # It exits when it reads EOF, between two forks, never in the middle of one.
            self.preloaders.remove(preloader)
            preloader.channel.close()
        else:
            preloader.kill(signal.SIGKILL)  # still importing the app: nothing to keep

    def master_only_fds(self):
        """File descriptors a preloader must not keep (its workers would inherit them)."""
        fds = [self._wake_r, self._wake_w]
        fds += [p.channel.fileno() for p in self.preloaders]
        fds += [w.tmp.fileno() for w in (*self.WORKERS.values(), *self.pending.values())]
        return fds

    def manage_preloaders(self):
        now = time.monotonic()
        for preloader in (self.preloader, self.next_preloader):
            if (preloader and not preloader.ready and preloader.boot_deadline
                    and now > preloader.boot_deadline and preloader.failure is None):
                limit = preloader.boot_deadline - preloader.started_at
                self.log.error("%r did not load the app within %.1fs "
                               "(preloader_boot_timeout); killing it", preloader, limit)
                preloader.failure = protocol.BootFailed(
                    WORKER_BOOT_ERROR, "app import took longer than %.1fs" % limit)
                preloader.kill(signal.SIGKILL)
        for age, worker in list(self.pending.items()):
            if now > worker.spawn_deadline:
                self.log.error("Spawn of worker %s got no answer within %.0fs; "
                               "killing the stuck preloader (pid: %s)",
                               age, SPAWN_TIMEOUT, worker.spawner_pid)
                self.forget_pending(age)
                os.kill(worker.spawner_pid, signal.SIGKILL)
        if self.preloader is None and self.next_preloader is None and self.restart_at \
                and now >= self.restart_at:
            self.restart_at = None
            self.preloader = self.start_preloader(self.generation)

    def read_channels(self, preloaders):
        for preloader in preloaders:
            while True:
                try:
                    message, fds = protocol.recv(preloader.channel)
                except BlockingIOError:
                    break
                except (EOFError, ConnectionError):
                    self.preloader_gone(preloader)
                    break
                for fd in fds:
                    os.close(fd)
                self.handle_message(preloader, message)

    def handle_message(self, preloader, message):
        match message:
            case protocol.PreloaderReady(boot_seconds=seconds):
                self.preloader_ready(preloader, seconds)
            case protocol.BootFailed():
                preloader.failure = message
            case protocol.WorkerSpawned(age=age, pid=pid):
                self.worker_spawned(age, pid)
            case protocol.SpawnFailed(age=age, reason=reason):
                self.log.error("%r could not fork worker %s: %s", preloader, age, reason)
                self.forget_pending(age)
            case _:
                self.log.error("Unexpected message from %r: %r", preloader, message)

    def preloader_ready(self, preloader, seconds):
        preloader.ready = True
        self.ever_ready = True
        self.restart_failures = 0
        self.log.info("%r loaded the app in %.3fs", preloader, seconds)
        if preloader is self.next_preloader:
            self.switch_generation()

    def switch_generation(self):
        """A HUP's new preloader is ready: its workers replace the old generation's.

        manage_workers() stops the oldest worker each time a new one registers, so the
        old generation is replaced one worker at a time.
        """
        old, self.preloader = self.preloader, self.next_preloader
        self.next_preloader = None
        self.generation = self.preloader.generation
        if old is not None:
            self.retire(old)
        self.log.info("Generation %s is serving; replacing the workers of the previous "
                      "generation", self.generation)
        for _ in range(self.num_workers):
            self.spawn_worker()

    def worker_spawned(self, age, pid):
        worker = self.pending.pop(age, None)
        if worker is None:
            self.log.warning("Worker (pid: %s) checked in after its spawn request was "
                             "given up; stopping it", pid)
            os.kill(pid, signal.SIGKILL)
            return
        worker.pid = pid
        self.WORKERS[pid] = worker
        self._stats["workers_spawned"] += 1
        if self.stopping:
            self.kill_worker(pid, signal.SIGTERM)

    def forget_pending(self, age):
        worker = self.pending.pop(age, None)
        if worker is not None:
            worker.tmp.close()

    def preloader_gone(self, preloader):
        """The preloader's channel hit EOF: it has exited (its status is reaped apart)."""
        preloader.channel.close()
        self.preloaders.remove(preloader)
        for age, worker in list(self.pending.items()):
            if worker.spawner_pid == preloader.pid:
                self.log.error("Worker %s was not spawned: %r exited", age, preloader)
                self.forget_pending(age)
        if preloader.retiring or self.stopping:
            return
        detail = ": %s" % preloader.failure.reason if preloader.failure else ""
        if preloader is self.next_preloader:
            self.next_preloader = None
            self.log.error("Reload failed: %r exited before it loaded the app%s; "
                           "generation %s keeps serving", preloader, detail,
                           self.generation)
            return
        self.preloader = None
        if not self.ever_ready and self.next_preloader is None:
            code = preloader.failure.exit_code if preloader.failure else WORKER_BOOT_ERROR
            reason = ("App failed to load." if code == APP_LOAD_ERROR
                      else "Worker failed to boot.")
            raise HaltServer("%s (%r exited%s)" % (reason, preloader, detail), code)
        delay = RESTART_BACKOFF[min(self.restart_failures, len(RESTART_BACKOFF) - 1)]
        self.restart_failures += 1
        self.restart_at = time.monotonic() + delay
        self.log.error("%r exited%s; the workers keep serving; a new preloader starts "
                       "in %ss", preloader, detail, delay)

    def reap_preloaders(self):
        for pid in list(self.helper_pids):
            try:
                wpid, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.helper_pids.discard(pid)  # gunicorn's waitpid(-1) reaped it first
                continue
            if wpid:
                self.helper_pids.discard(pid)
                self.log_preloader_exit(pid, status)

    def log_preloader_exit(self, pid, status):
        if os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status))
            expected = sig == signal.SIGTERM
            (self.log.info if expected else self.log.error)(
                "Preloader (pid: %s) was sent %s", pid, sig.name)
        elif os.WEXITSTATUS(status):
            self.log.error("Preloader (pid: %s) exited with code %s",
                           pid, os.WEXITSTATUS(status))
        else:
            self.log.info("Preloader (pid: %s) exited", pid)

    def wait_for_preloaders(self, deadline):
        while self.helper_pids and time.monotonic() < deadline:
            self.reap_preloaders()
            time.sleep(0.05)
        for pid in list(self.helper_pids):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.helper_pids.discard(pid)

    # -- HUP --------------------------------------------------------------------------

    def reload_config(self):
        """gunicorn's Arbiter.reload() up to its spawn loop; spawning is the preloader's.

        Unlike gunicorn, a configuration that fails to load keeps the running one (and
        its workers) instead of stopping the master. Returns whether it loaded.
        """
        self._stats["reloads"] += 1
        old_cfg, old_address = self.cfg, self.cfg.address
        set_config_env(old_cfg, on=False)
        try:
            self.app.reload()
        except SystemExit:
            self.app.cfg = old_cfg
            set_config_env(old_cfg, on=True)
            self.log.error("Reload failed: the configuration did not load (error above); "
                           "the running configuration and generation %s keep serving",
                           self.generation)
            return False
        self.setup(self.app)
        self.log.reopen_files()
        if old_address != self.cfg.address:
            for listener in self.LISTENERS:
                listener.close()
            self.LISTENERS = sock.create_sockets(self.cfg, self.log)
            self.log.info("Listening at: %s", ",".join(str(lnr) for lnr in self.LISTENERS))
        self.cfg.on_reload(self)
        if self.pidfile is not None:
            self.pidfile.unlink()
        if self.cfg.pidfile is not None:
            self.pidfile = Pidfile(self.cfg.pidfile)
            self.pidfile.create(self.pid)
        util._setproctitle("master [%s]" % self.proc_name)
        if self.cfg.spawn_method == "direct":
            self.log.warning("spawn_method = 'direct' takes effect on USR2 (re-exec), "
                             "not HUP; still spawning from the preloader")
        return True


def set_config_env(cfg, on):
    """Apply (on) or undo (off) the `raw_env` variables of `cfg`, as gunicorn's reload does."""
    for key, value in cfg.env.items():
        if on:
            os.environ[key] = value
        elif key in cfg.env_orig:
            os.environ[key] = cfg.env_orig[key]
        else:
            os.environ.pop(key, None)

