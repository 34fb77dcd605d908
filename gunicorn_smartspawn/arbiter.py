"""The master: gunicorn's Arbiter, extended to spawn workers from a preloader or a template.

gunicorn has no supported way to replace its Arbiter. It imports the worker class inside
Arbiter.setup(), so `install()` (run from Worker.setup()) patches these gunicorn methods,
once, and nothing else:

- ``Arbiter.run``: switches the live arbiter to SmartArbiter when the worker class is
  smartspawn's, then runs gunicorn's own main loop;
- ``BaseApplication.wsgi``: returns None in the master when smart spawning is on, so
  ``--preload`` never imports the app there (the preloader does);
- the control socket's ``CommandHandlers.show_workers`` and ``show_stats`` (they add
  smartspawn's fields), ``CommandHandlers.help`` and
  ``ControlSocketServer._execute_command`` (add ``refork``).

SmartArbiter overrides, each extending the gunicorn method of the same name: start,
init_signals, wakeup, wait_for_signals (also reads the spawners' channels),
manage_workers, spawn_workers, spawn_worker, reap_workers, handle_hup, handle_usr1,
setup, stop; and adds handle_urg (refork.py). manage_workers() also runs the worker
lifecycle (lifecycle.py) and hides outgoing workers from gunicorn's count. The test
suite checks that these gunicorn methods keep the signatures assumed here
(tests/test_gunicorn_contract.py).

Signals (master): gunicorn's HUP QUIT INT TERM TTIN TTOU USR1 USR2 WINCH, plus URG:
refork now (with fork_worker).
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
from gunicorn.ctl import handlers as ctl_handlers
from gunicorn.ctl import server as ctl_server
from gunicorn.errors import ConfigError, HaltServer
from gunicorn.pidfile import Pidfile

from gunicorn_smartspawn import _linux, protocol, state
from gunicorn_smartspawn.config import install_settings
from gunicorn_smartspawn.counters import Counters
from gunicorn_smartspawn.lifecycle import LifecycleMixin
from gunicorn_smartspawn.preloader import start_preloader
from gunicorn_smartspawn.refork import ReforkMixin, refork_enabled
from gunicorn_smartspawn.worker import (
    APP_LOAD_ERROR, WORKER_BOOT_ERROR, SmartWorkerMixin, become_worker, per_worker_sockets,
    worker_class_for,
)

GUNICORN_RUN = Arbiter.run
GUNICORN_WSGI = BaseApplication.wsgi
GUNICORN_SHOW_WORKERS = ctl_handlers.CommandHandlers.show_workers
GUNICORN_SHOW_STATS = ctl_handlers.CommandHandlers.show_stats
GUNICORN_HELP = ctl_handlers.CommandHandlers.help
GUNICORN_EXECUTE = ctl_server.ControlSocketServer._execute_command

# How long a spawn request may go unanswered before its spawner is deemed stuck.
SPAWN_TIMEOUT = 5.0
# How often the master samples the total PSS of its processes for statsd (seconds).
PSS_SAMPLE_INTERVAL = 30.0
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

    # The control socket's thread calls these; they read master state, as gunicorn's do.
    def show_workers(self):
        result = GUNICORN_SHOW_WORKERS(self)
        if isinstance(self.arbiter, SmartArbiter):
            for entry in result["workers"]:
                entry.update(self.arbiter.worker_fields(entry["pid"]))
        return result

    def show_stats(self):
        result = GUNICORN_SHOW_STATS(self)
        if isinstance(self.arbiter, SmartArbiter):
            result.update(self.arbiter.smartspawn_stats())
        return result

    def help_(self):
        result = GUNICORN_HELP(self)
        if isinstance(self.arbiter, SmartArbiter):
            result["commands"]["refork"] = "Re-fork every worker from a warmed one (URG)"
        return result

    def execute_command(self, parts):
        if parts and parts[0].lower() == "refork" and isinstance(self.arbiter, SmartArbiter):
            return self.arbiter.queue_refork()
        return GUNICORN_EXECUTE(self, parts)

    Arbiter.run = run
    BaseApplication.wsgi = wsgi
    ctl_handlers.CommandHandlers.show_workers = show_workers
    ctl_handlers.CommandHandlers.show_stats = show_stats
    ctl_handlers.CommandHandlers.help = help_
    ctl_server.ControlSocketServer._execute_command = execute_command


def smart_spawning_requested(cfg):
    try:
        install_settings(cfg)
    except ConfigError:
        return True  # SmartArbiter.run() reports it before anything starts
    return (cfg.spawn_method == "smart" and not cfg.reload
            and _linux.smart_spawn_unsupported() is None)


class SmartArbiter(LifecycleMixin, ReforkMixin, Arbiter):
    """gunicorn's Arbiter with smart spawning. See the module docstring."""

    SIGNALS = [*Arbiter.SIGNALS, signal.SIGURG]

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
        self.spawners = []            # every spawner whose channel is open
        self.preloader = None         # the preloader serving spawn requests
        self.next_preloader = None    # booting after a HUP, for generation + 1
        self.ever_ready = False
        self.restart_failures = 0
        self.restart_at = None
        self.pending = {}             # age -> worker record awaiting WorkerSpawned
        self.records = {}             # pid -> worker record holding a slot or a channel
        # Our children that are not workers, not yet reaped: pid -> "preloader",
        # "template" or "standby". Only these (and gunicorn's WORKERS) are ever signalled:
        # an unreaped child's pid cannot have been reused.
        self.helpers = {}
        self.killed_on_purpose = set()  # spawner pids the master SIGKILLed itself
        self.stopping = False
        self.counters = Counters()    # inherited by every process forked from here on
        self.state_path = state.state_path(os.getpid())
        self.state_published = 0.0
        self.state_unwritable = False
        self.pss_sampled = None
        state.remove_stale()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.forking = False  # the master is forking (close_master_only)
        os.register_at_fork(before=self.note_fork, after_in_child=self.close_master_only)
        self.smart = self.choose_smart_spawning()
        self.init_refork()
        self.init_lifecycle()
        return GUNICORN_RUN(self)

    def choose_smart_spawning(self):
        # Any fork from a preloader or a template (fork_worker) needs the subreaper.
        why = _linux.smart_spawn_unsupported()
        if why is None:
            try:
                _linux.become_subreaper()
            except OSError as exc:
                why = "prctl(PR_SET_CHILD_SUBREAPER) failed: %s" % exc
        # With --reload, workers forked from a template would run the code it loaded: an
        # edited file would stop taking effect after the first refork.
        refork_off = why or (self.cfg.reload and "--reload needs every worker to import "
                             "the code itself")
        if refork_off and refork_enabled(self.cfg):
            self.log.warning("smartspawn: fork_worker and refork_on_memory are off: %s",
                             refork_off)
            self.cfg.settings["fork_worker"].set(False)
            self.cfg.settings["refork_on_memory"].set(False)
        if self.cfg.spawn_method == "direct":
            return False
        if why is None and self.cfg.reload:
            why = "--reload restarts workers that import the app themselves"
        if why:
            self.log.warning("smartspawn: falling back to direct spawning: %s", why)
            return False
        if self.cfg.preload_app:
            self.log.warning("smartspawn: --preload is not needed with spawn_method = "
                             "'smart': the preloader process loads the app, not the master")
        return True

    # -- gunicorn's main loop, extended ------------------------------------------------

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
        """Wait for a signal or a spawner message; returns the signals."""
        if self.refork is not None or self.outgoing:
            timeout = min(timeout, 0.05)  # a refork or a replacement advances as workers boot
        if self.cfg.max_worker_memory or self.cfg.refork_on_memory:
            timeout = min(timeout, self.cfg.memory_sample_interval)
        # poll, not select: with fork_worker each worker has a channel, and select()
        # fails once an fd passes FD_SETSIZE (1024).
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for spawner in self.spawners:
            poller.register(spawner.channel, select.POLLIN)
        readable = {fd for fd, _event in poller.poll(timeout * 1000)}
        if self._wake_r in readable:
            while True:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    break
        self.read_channels([s for s in self.spawners if s.channel.fileno() in readable])
        signals = []
        while True:
            try:
                sig = self.SIG_QUEUE.get_nowait()
            except queue.Empty:
                return signals
            if sig != self.WAKEUP_REQUEST:
                signals.append(sig)

    def manage_workers(self):
        self.release_departed()
        self.manage_spawners()
        self.dispatch_spawns()
        self.manage_lifecycle()
        self.manage_refork()
        with self.outgoing_not_counted():
            super().manage_workers()
        self.publish_state()

    def publish_state(self):
        """Rewrite the state file for `smartspawn status`, at most once a second."""
        now = time.monotonic()
        if now - self.state_published < 1.0:
            return
        self.state_published = now
        snapshot = state.snapshot(self)
        try:
            state.write(self.state_path, snapshot)
        except OSError as exc:
            # Once at warning: `smartspawn status` cannot see this server.
            (self.log.debug if self.state_unwritable else self.log.warning)(
                "Could not write %s: %s", self.state_path, exc)
            self.state_unwritable = True
        if self.pss_sampled is None or now - self.pss_sampled >= PSS_SAMPLE_INTERVAL:
            self.pss_sampled = now
            mib = state.total_pss(p["pid"] for p in snapshot["processes"]) / (1024 * 1024)
            self.log.debug("Total PSS of the server: %.1f MiB", mib, extra={
                "metric": "smartspawn.pss_total_mib", "value": round(mib, 1),
                "mtype": "gauge"})

    def spawn_workers(self):
        spawner = self.current_spawner()
        if spawner is None:
            if not self.smart:
                return super().spawn_workers()
            if (self.preloader is None and self.next_preloader is None
                    and self.restart_at is None and not self.stopping):
                # preloader_idle_timeout stopped the last one, and no template is alive.
                self.log.info("Starting a preloader on demand")
                self.preloader = self.start_preloader(self.generation)
            return None  # spawning starts when the preloader is ready
        # No random sleep between spawns as in gunicorn: a fork is cheap and imports nothing.
        for _ in range(self.num_workers - len(self.WORKERS) - len(self.pending)):
            self.spawn_worker()
        return None

    def spawn_worker(self):
        self.worker_age += 1
        worker = self.worker_class(self.worker_age, self.pid, self.LISTENERS, self.app,
                                   self.timeout / 2.0, self.cfg, self.log)
        worker.generation = self.generation
        worker.slot = self.counters.allocate()
        worker.spawned_mtime = worker.tmp.last_update()
        spawner = self.current_spawner()
        if spawner is None:
            return self.spawn_direct(worker)
        worker.spawned_from = spawner.kind
        worker.spawner_pid = spawner.pid
        worker.generation = spawner.generation
        self.cfg.pre_fork(self, worker)
        worker.spawn_requested = time.monotonic()
        worker.spawn_deadline = None  # queued: see dispatch_spawns
        self.pending[worker.age] = worker
        self.dispatch_spawns()
        return None

    def dispatch_spawns(self):
        """Send each spawner its next queued spawn request, one at a time.

        A spawner forks one worker after another: with many requests in its queue (a
        start, a HUP, on a big heap) the last would wait for all the others. One at a
        time, each spawn is timed from when its spawner takes it (SPAWN_TIMEOUT).
        """
        in_flight = {w.spawner_pid for w in self.pending.values() if w.spawn_deadline}
        for _age, worker in sorted(self.pending.items()):
            if worker.spawn_deadline is None and worker.spawner_pid not in in_flight:
                in_flight.add(worker.spawner_pid)
                self.send_spawn_request(self.spawner_by_pid(worker.spawner_pid), worker)

    def send_spawn_request(self, spawner, worker):
        if spawner is None:  # it exited while the request was queued
            self.log.error("Worker %s was not spawned: its spawner exited", worker.age)
            self.forget_pending(worker.age)
            return
        worker.spawn_deadline = time.monotonic() + SPAWN_TIMEOUT
        fds = [worker.tmp.fileno()]
        child_end = None
        if refork_enabled(self.cfg):
            worker.channel, child_end = protocol.channel_pair()
            worker.channel.setblocking(False)
            fds.append(child_end.fileno())
        # reuse_port: the worker's own sockets, bound here as gunicorn's worker binds them
        # before it drops privileges (a port below 1024 with `user`).
        listeners = []
        if per_worker_sockets(self.cfg):
            listeners = sock.create_sockets(self.cfg, self.log)
            fds += [listener.fileno() for listener in listeners]
        try:
            spawner.request_spawn(worker.age, worker.slot, fds, len(listeners))
        except OSError as exc:
            # The spawner is gone; its EOF is handled by read_channels().
            self.log.error("Spawn request to %r failed: %s", spawner, exc)
            self.forget_pending(worker.age)
        finally:
            if child_end is not None:
                child_end.close()
            sock.close_sockets(listeners, unlink=False)

    def spawn_direct(self, worker):
        """gunicorn's own spawn: fork from the master, the worker imports the app."""
        worker.spawner_pid = self.pid
        self.cfg.pre_fork(self, worker)
        child_end = None
        if refork_enabled(self.cfg):
            worker.channel, child_end = protocol.channel_pair()
        pid = os.fork()
        if pid:
            worker.pid = pid
            self.WORKERS[pid] = self.records[pid] = worker
            self._stats["workers_spawned"] += 1
            if child_end is not None:
                child_end.close()
                worker.channel.setblocking(False)
            return pid
        try:  # the child (close_master_only ran at the fork); never unwinds into the loop
            if child_end is not None:
                worker.channel.close()
                worker.channel = child_end
            become_worker(self, worker)
        finally:
            os._exit(1)

    def reap_workers(self):
        # A worker's WorkerSpawned is written before it can exit: read it first, so that
        # gunicorn's reaper knows the pid.
        self.read_channels(list(self.spawners))
        self.reap_spawners()
        unbooted = self.unbooted_template_children()
        super().reap_workers()
        self.reap_spawners()  # forget the helpers gunicorn's waitpid(-1) just reaped
        self.count_failed_template_children(unbooted)
        self.release_departed()

    def handle_hup(self):
        if not self.smart:
            # gunicorn's reload spawns from the master, which loads the new code: the
            # template (old code) must not serve those spawns.
            self.end_template_generation()
            return super().handle_hup()
        self.log.info("Hang up: %s", self.master_name)
        if not self.reload_config():
            return None
        if self.refork is not None:
            self.abort_refork("HUP")
        if self.next_preloader is not None:
            self.log.info("HUP supersedes the reload already booting in %r",
                          self.next_preloader)
            self.retire(self.next_preloader)
        self.next_preloader = self.start_preloader(self.generation + 1)
        if self.dirty_arbiter_pid:
            self.kill_dirty_arbiter(signal.SIGHUP)
        return None

    def handle_usr1(self):
        super().handle_usr1()
        for pid in list(self.helpers):  # they write to the same log files
            self.signal_child(pid, signal.SIGUSR1)

    def setup(self, app):
        # Runs on HUP only: the first setup() ran before the switch to this class.
        super().setup(app)
        for warning in install_settings(self.cfg):
            self.log.warning(warning)
        self.worker_class = worker_class_for(self.cfg)

    def stop(self, graceful=True):
        self.stopping = True
        self.read_channels(list(self.spawners))  # workers forked just now stop too
        for spawner in list(self.spawners):
            self.retire(spawner)
        super().stop(graceful)
        for spawner in self.spawners:
            spawner.channel.close()
        self.spawners = []
        self.wait_for_spawners(deadline=time.monotonic() + 2.0)
        state.remove(self.state_path)

    # -- the control socket (called from its thread: only reads, or queues a signal) ----

    def worker_fields(self, pid):
        worker = self.WORKERS.get(pid)
        if worker is None:
            return {}
        return {"generation": worker.generation, "spawned_from": worker.spawned_from,
                "uss": worker.uss, "outgoing": self.outgoing.get(pid),
                **self.counters.snapshot(worker.slot)}

    def smartspawn_stats(self):
        return {"generation": self.generation,
                "spawn_method": "smart" if self.smart else "direct",
                "preloader_pid": self.preloader.pid if self.preloader else None,
                "template_pid": self.template.pid if self.template else None,
                "reforks": self.reforks_done,
                "refork_in_progress": self.refork is not None,
                **self.lifecycle_stats}

    def queue_refork(self):
        """The control socket's `refork`: the same as `kill -URG <master>`."""
        self.SIG_QUEUE.put_nowait(signal.SIGURG)
        self.wakeup()
        return {"status": "refork requested" if refork_enabled(self.cfg)
                else "ignored: fork_worker is off"}

    # -- worker records -----------------------------------------------------------------

    def worker_spawned(self, age, pid):
        worker = self.pending.pop(age, None)
        if worker is None:
            self.log.warning("Worker (pid: %s) checked in after its spawn request was "
                             "given up; stopping it", pid)
            os.kill(pid, signal.SIGKILL)
            return
        worker.pid = pid
        self.WORKERS[pid] = self.records[pid] = worker
        self._stats["workers_spawned"] += 1
        if worker.spawned_from == "preloader":
            self.restart_failures = 0  # a preloader that spawns is a healthy one
        self.dispatch_spawns()
        spawner = self.spawner_by_pid(worker.spawner_pid)
        if spawner is not None and spawner.retiring and not self.stopping:
            # Asked for before a HUP's switch: its generation is being replaced.
            self.replace_worker(worker, "its %r retired" % spawner)
        latency_ms = (time.monotonic() - worker.spawn_requested) * 1000
        self.log.debug("Worker %s (pid: %s) checked in %.1f ms after its spawn request",
                       age, pid, latency_ms, extra={"metric": "smartspawn.spawn_latency",
                                                    "value": latency_ms, "mtype": "histogram"})
        if self.stopping:
            self.kill_worker(pid, signal.SIGTERM)

    def forget_pending(self, age):
        worker = self.pending.pop(age, None)
        if worker is not None:
            worker.tmp.close()
            self.release_resources(worker)

    def release_departed(self):
        """Free the slot and channel of every worker gunicorn has forgotten."""
        for pid in [pid for pid in self.records if pid not in self.WORKERS]:
            self.release_resources(self.records.pop(pid))

    def release_resources(self, worker):
        self.counters.release(worker.slot)
        worker.slot = None
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None

    def note_fork(self):
        # os.getppid() in the child cannot tell: a grandchild whose parent has exited
        # already is re-parented to the master (a subreaper).
        self.forking = os.getpid() == getattr(self, "pid", None)

    def close_master_only(self):
        """At every fork from the master, in the child: close what only the master holds.

        Whoever forks: smartspawn (a preloader, a direct spawn), gunicorn (its workers, a
        respawned dirty arbiter) or a hook's os.fork(). A kept copy of a spawner's channel
        would hide its EOF; another worker's heartbeat or channel would leak into every
        process forked from this child. Also the signal wakeup fd: its number may be
        reused in the child, and a signal would write a byte into that file. Closed
        through their objects, so that nothing closes the numbers again later.
        """
        if not self.forking:
            return  # a fork in some other process of the tree (at-fork hooks are inherited)
        self.forking = False
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for spawner in self.spawners:
            spawner.channel.close()
        workers = {id(w): w for w in (*self.records.values(), *self.WORKERS.values(),
                                      *self.pending.values())}
        for worker in workers.values():
            worker.tmp.close()
            if worker.channel is not None:
                worker.channel.close()

    # -- spawners: the preloader and templates --------------------------------------------

    def current_spawner(self):
        """The template if one is ready, else the preloader if ready, else None."""
        for spawner in (self.template, self.preloader):
            if spawner is not None and spawner.ready and not (spawner.retiring or spawner.stuck):
                return spawner
        return None

    def start_preloader(self, generation):
        preloader = start_preloader(self, generation, self.cfg.preloader_boot_timeout)
        self.spawners.append(preloader)
        self.helpers[preloader.pid] = "preloader"
        self.log.info("Started %r", preloader)
        return preloader

    def retire(self, spawner):
        """Stop using `spawner`; it is stopped once no spawn waits on it (close_retired)."""
        spawner.retiring = True
        if spawner.ready:
            self.close_retired()
        elif spawner.kind == "template":
            # A refork's candidate: still a serving worker, finishing its requests. It
            # stays in WORKERS, and gunicorn stops it like any worker.
            pass
        else:
            self.kill_spawner(spawner)  # still loading the app: nothing in it to keep

    def kill_spawner(self, spawner):
        """SIGKILL on purpose: its exit is logged at info; the reason was logged already."""
        self.killed_on_purpose.add(spawner.pid)
        self.signal_child(spawner.pid, signal.SIGKILL)

    def signal_child(self, pid, sig):
        """Signal `pid` only while it is a child we have not reaped: its pid cannot have
        been reused by another process."""
        if pid in self.helpers or pid in self.WORKERS:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # a zombie: reaped soon

    def close_retired(self):
        # Close only when no spawn is pending: a worker's check-in must not be lost.
        busy = {worker.spawner_pid for worker in self.pending.values()}
        for spawner in list(self.spawners):
            if spawner.retiring and spawner.ready and spawner.pid not in busy:
                self.spawners.remove(spawner)
                spawner.channel.close()
                # Not only the EOF: a process forked from the master by gunicorn or a
                # hook may still hold a copy of the channel.
                self.signal_child(spawner.pid, signal.SIGTERM)

    def spawner_by_pid(self, pid):
        return next((s for s in self.spawners if s.pid == pid), None)

    def manage_spawners(self):
        now = time.monotonic()
        for preloader in (self.preloader, self.next_preloader):
            if (preloader and not preloader.ready and preloader.boot_deadline
                    and now > preloader.boot_deadline and preloader.failure is None):
                limit = preloader.boot_deadline - preloader.started_at
                self.log.error("%r did not load the app within %.1fs "
                               "(preloader_boot_timeout); killing it", preloader, limit)
                preloader.failure = protocol.BootFailed(
                    WORKER_BOOT_ERROR, "app import took longer than %.1fs" % limit)
                self.kill_spawner(preloader)
        for age, worker in list(self.pending.items()):
            if worker.spawn_deadline and now > worker.spawn_deadline and age in self.pending:
                spawner = self.spawner_by_pid(worker.spawner_pid)
                self.log.error("Spawn of worker %s got no answer within %.0fs from %r; "
                               "killing it", age, SPAWN_TIMEOUT, spawner)
                self.forget_pending(age)
                if spawner is not None:
                    spawner.stuck = True
                    self.kill_spawner(spawner)
                    for other, pending in list(self.pending.items()):
                        if pending.spawner_pid == spawner.pid:
                            self.forget_pending(other)
        self.close_retired()
        if self.smart and self.preloader is None and self.next_preloader is None \
                and self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self.preloader = self.start_preloader(self.generation)

    def read_channels(self, spawners):
        for spawner in spawners:
            while spawner in self.spawners:
                try:
                    message, fds = protocol.recv(spawner.channel)
                except BlockingIOError:
                    break
                except (EOFError, ConnectionError):
                    self.spawner_gone(spawner)
                    break
                except (protocol.ProtocolError, OSError) as exc:
                    self.broken_spawner(spawner, exc)
                    break
                for fd in fds:
                    os.close(fd)
                self.handle_message(spawner, message)

    def broken_spawner(self, spawner, exc):
        """What came from `spawner` is no message: it is broken, never trusted again."""
        self.log.error("%r sent what is not a message (%s); killing it", spawner, exc)
        if spawner.failure is None:
            spawner.failure = protocol.BootFailed(WORKER_BOOT_ERROR, "broken channel: %s" % exc)
        self.kill_spawner(spawner)
        self.spawner_gone(spawner)

    def handle_message(self, spawner, message):
        match message:
            case protocol.SpawnerReady(boot_seconds=seconds):
                spawner.ready = True
                if spawner.kind == "template":
                    self.template_ready(spawner, seconds)
                else:
                    self.preloader_ready(spawner, seconds)
            case protocol.BootFailed():
                spawner.failure = message
            case protocol.StandbyReady(pid=pid):
                spawner.standby_pid = pid
                self.helpers[pid] = "standby"
            case protocol.WorkerSpawned(age=age, pid=pid):
                if pid == spawner.standby_pid:
                    spawner.standby_pid = None
                self.helpers.pop(pid, None)  # a worker now: gunicorn's to reap
                self.worker_spawned(age, pid)
            case protocol.SpawnFailed(age=age, reason=reason):
                self.log.error("%r could not fork worker %s: %s", spawner, age, reason)
                self.forget_pending(age)
            case _:
                self.broken_spawner(spawner, "unexpected %r" % (message,))

    def preloader_ready(self, preloader, seconds):
        # restart_failures is reset by its first worker (worker_spawned), not here: a
        # preloader killed as stuck after every restart would restart without a pause.
        self.ever_ready = True
        self.log.info("%r loaded the app in %.3fs", preloader, seconds)
        if preloader is self.next_preloader:
            self.switch_generation()

    def switch_generation(self):
        """A HUP's new preloader is ready: its workers replace the old generation's.

        Spawn before retire, as for max_requests (lifecycle.py): every old worker is
        outgoing, so manage_workers() spawns its replacement from the new preloader, and
        the old ones are stopped once `workers` new ones serve.
        """
        old, self.preloader = self.preloader, self.next_preloader
        self.next_preloader = None
        self.generation = self.preloader.generation
        if old is not None:
            self.retire(old)
        self.end_template_generation()
        self.log.info("Generation %s is ready; replacing the workers of the previous "
                      "generation", self.generation)
        for worker in list(self.WORKERS.values()):
            if worker.generation < self.generation and worker.pid not in self.outgoing:
                self.replace_worker(worker, "HUP: generation %s" % self.generation)

    def spawner_gone(self, spawner):
        """The spawner's channel hit EOF: it has exited (its status is reaped apart)."""
        spawner.channel.close()
        self.spawners.remove(spawner)
        for age, worker in list(self.pending.items()):
            if worker.spawner_pid == spawner.pid:
                self.log.error("Worker %s was not spawned: %r exited", age, spawner)
                self.forget_pending(age)
        if spawner.retiring or self.stopping:
            return
        if spawner.kind == "template":
            self.template_gone(spawner)
            return
        detail = ": %s" % spawner.failure.reason if spawner.failure else ""
        if spawner is self.next_preloader:
            self.next_preloader = None
            self.log.error("Reload failed: %r exited before it loaded the app%s; "
                           "generation %s keeps serving", spawner, detail, self.generation)
            return
        self.preloader = None
        if not self.ever_ready and self.next_preloader is None:
            code = spawner.failure.exit_code if spawner.failure else WORKER_BOOT_ERROR
            reason = ("App failed to load." if code == APP_LOAD_ERROR
                      else "Worker failed to boot.")
            raise HaltServer("%s (%r exited%s)" % (reason, spawner, detail), code)
        delay = RESTART_BACKOFF[min(self.restart_failures, len(RESTART_BACKOFF) - 1)]
        self.restart_failures += 1
        self.restart_at = time.monotonic() + delay
        self.log.error("%r exited%s; the workers keep serving; a new preloader starts "
                       "in %ss", spawner, detail, delay)

    def reap_spawners(self):
        """Reap (and log) exited helpers: spawners and standbys."""
        for pid in list(self.helpers):
            try:
                wpid, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status = pid, None  # gunicorn's waitpid(-1) reaped it first
            if wpid:
                self.helper_reaped(pid, self.helpers.pop(pid), status)

    def helper_reaped(self, pid, role, status):
        if role == "standby":
            for spawner in self.spawners:
                if spawner.standby_pid == pid:
                    spawner.standby_pid = None
        if status is None:
            return
        name = "Standby" if role == "standby" else "Spawner"
        if os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status))
            expected = sig == signal.SIGTERM or pid in self.killed_on_purpose
            self.killed_on_purpose.discard(pid)
            (self.log.info if expected else self.log.error)(
                "%s (pid: %s) was sent %s", name, pid, sig.name)
        elif os.WEXITSTATUS(status):
            self.log.error("%s (pid: %s) exited with code %s",
                           name, pid, os.WEXITSTATUS(status))
        else:
            self.log.info("%s (pid: %s) exited", name, pid)

    def wait_for_spawners(self, deadline):
        while self.helpers and time.monotonic() < deadline:
            self.reap_spawners()
            time.sleep(0.05)
        for pid in list(self.helpers):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            del self.helpers[pid]

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
