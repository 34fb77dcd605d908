"""The master: gunicorn's Arbiter, extended to spawn workers from a preloader or a template.

SmartArbiter is gunicorn's main loop plus:

- ``fleet`` (fleet.py): the table of its children, one record per process (workers,
  standbys, preloaders, templates), with a role and a state;
- two policies that read the table and yield actions (actions.py), which only the
  arbiter carries out (carry_out): ``reforker`` (refork.py: fork_worker, URG, the
  control socket's `refork`) and ``lifecycle`` (lifecycle.py: spawn before retire,
  memory samples, the idle preloader, a failing template).
- ``notifier`` (notify.py): what systemd is told (READY=1 once a worker serves,
  RELOADING=1 around a HUP, STATUS, STOPPING=1).

The arbiter itself keeps what gunicorn's has: signals, HUP, shutdown, and the dispatch of
the spawners' messages (handle_message). It overrides, each extending the gunicorn method
of the same name: run, start, init_signals, wakeup, wait_for_signals, manage_workers,
spawn_workers, spawn_worker, reap_workers, handle_hup, handle_usr1, setup, stop; and adds
handle_urg. How it gets to run is in patches.py.

Signals (master): gunicorn's HUP QUIT INT TERM TTIN TTOU USR1 USR2 WINCH, plus URG:
refork now (with fork_worker).
"""
import contextlib
import errno
import gc
import os
import queue
import random
import select
import signal
import sys
import time

from gunicorn import sock, util
from gunicorn.arbiter import Arbiter
from gunicorn.errors import ConfigError, HaltServer
from gunicorn.pidfile import Pidfile

from gunicorn_smartspawn.forksafety import immortal
from gunicorn_smartspawn.host import patches
from gunicorn_smartspawn.master import actions, snapshot
from gunicorn_smartspawn.shared import _linux, hookstate, protocol, signals, state
from gunicorn_smartspawn.master.backoff import Backoff
from gunicorn_smartspawn.shared.config import ShareOfLimit, install_settings
from gunicorn_smartspawn.master.fleet import (
    SPAWN_TIMEOUT, STOP_SIGNALS, ChannelBroken, ChannelClosed, Fleet, Role, State,
)
from gunicorn_smartspawn.master.lifecycle import Lifecycle
from gunicorn_smartspawn.master.notify import Notifier
from gunicorn_smartspawn.master.outofband import Coordinator, Grant, Revoke
from gunicorn_smartspawn.master.watchdog import Watchdog
from gunicorn_smartspawn.spawner.preloader import start_preloader
from gunicorn_smartspawn.master.refork import Reforker, refork_enabled
from gunicorn_smartspawn.spawner.template import Template
from gunicorn_smartspawn.worker.base import (
    APP_LOAD_ERROR, WORKER_BOOT_ERROR, become_worker, per_worker_sockets, worker_class_for,
)

# How often the master samples the total PSS of its processes for statsd (seconds).
PSS_SAMPLE_INTERVAL = 30.0
# Restart delays for a preloader that keeps failing after the first boot (seconds).
RESTART_DELAYS = (0, 1, 2, 5, 10, 30)
# The waits after spawns the master could not prepare, in a row (seconds): no fd left
# for a heartbeat or a channel (EMFILE), a reuse_port seat that cannot be bound.
SPAWN_FAILURE_DELAYS = (1, 2, 5, 10)


class SmartArbiter(Arbiter):
    """gunicorn's Arbiter with smart spawning. See the module docstring."""

    SIGNALS = [*Arbiter.SIGNALS, signal.SIGURG]
    dirty_arbiter_pid = 0  # gunicorn before 25.1 has no dirty arbiter (and no attribute)

    def run(self):
        try:
            settings_warnings = install_settings(self.cfg)
        except ConfigError as exc:
            print("\nError: %s\n" % exc, file=sys.stderr)
            sys.stderr.flush()
            sys.exit(1)
        for warning in settings_warnings:
            self.log.warning(warning)
        self.log_memory_share()
        self.metrics = self.metrics_server()
        self.worker_class = worker_class_for(self.cfg)
        self.generation = 1
        self.stopping = False
        self.reloading = False        # in gunicorn's own HUP (direct spawning)
        self.ever_ready = False       # a preloader has loaded the app once
        self.restarts = Backoff(RESTART_DELAYS)  # since a preloader last spawned a worker
        self.restart_at = None
        self.spawn_failures = Backoff(SPAWN_FAILURE_DELAYS)  # since a spawn was prepared
        self.fleet = Fleet(self.log, self.WORKERS)
        self.state_path = state.state_path(os.getpid())
        self.state_dir_fd = None  # held open: how `smartspawn status` finds it (state.held)
        self.state_published = 0.0
        self.state_unwritable = False
        self.pss_sampled = None
        self.published = None  # the last content of the state file, for /metrics
        self.spawn_latency = snapshot.Latencies()
        self.logged_worker_count = None  # gunicorn's "N workers" gauge, when it changes
        self.reload_under_way = None  # a HUP's (generation, workers replaced, start)
        self.hook_state = hookstate.HookState(self.log)
        self.warned_immortal = False
        state.remove_stale()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.forking = False  # the master is forking (close_master_only)
        os.register_at_fork(before=self.note_fork, after_in_parent=self.forked,
                            after_in_child=self.close_master_only)
        self.smart = self.choose_smart_spawning()
        self.reforker = Reforker(self.cfg, self.log, self.fleet, self.num_workers)
        self.lifecycle = Lifecycle(self.cfg, self.log, self.fleet)
        self.coordinator = Coordinator(self.cfg, self.log, self.fleet)
        self.worker_commands = queue.SimpleQueue()  # (verb, pid) from the control socket
        # Without $NOTIFY_SOCKET, gunicorn's sd_notify sends nothing: nothing to decide.
        self.notifier = Notifier(self.log, self.fleet,
                                 enabled=self.smart and "NOTIFY_SOCKET" in os.environ)
        self.watchdog = Watchdog(self.fleet.counters)
        # The control socket's `worker <verb> PID`, for the loop (worker_command).
        self.worker_commands = queue.SimpleQueue()
        return patches.GUNICORN_RUN(self)

    def log_memory_share(self):
        """max_worker_memory = "10%": what it came to, from the cgroup's limit now."""
        if isinstance(self.cfg.max_worker_memory, ShareOfLimit):
            self.log.info(self.cfg.max_worker_memory.describe())

    def metrics_server(self):
        """The server of `metrics_bind` (or None), bound before the pidfile is written: a
        port that cannot be bound stops the start (exit 1), as a bad setting does."""
        if not self.cfg.metrics_bind:
            return None
        from gunicorn_smartspawn.master.metrics import MetricsServer  # an optional extra
        # A master started by USR2 binds once the old master, which holds the port, exits.
        retry = "GUNICORN_PID" in os.environ
        try:
            return MetricsServer(self.cfg.metrics_bind, self.log, lambda: self.published,
                                 retry)
        except OSError as exc:
            print("\nError: metrics_bind=%r: cannot listen there: %s\n"
                  % (self.cfg.metrics_bind, exc), file=sys.stderr)
            sys.stderr.flush()
            sys.exit(1)

    def choose_smart_spawning(self):
        # Any fork from a preloader or a template (fork_worker) needs the subreaper.
        why = _linux.smart_spawn_unsupported()
        if why is None:
            try:
                _linux.become_subreaper()
            except OSError as exc:
                why = "prctl(PR_SET_CHILD_SUBREAPER) failed: %s" % exc
        self.unsupported = why
        self.turn_off_what_cannot_work()
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

    def turn_off_what_cannot_work(self):
        """At start and at every HUP (a new config may ask again): no refork without
        the subreaper, nor with --reload, where workers forked from a template would run
        the code it loaded, and an edited file would stop taking effect; no oob_gc on a
        free-threaded build (untested: one generation, a count that can go negative, a
        collection only once the heap has also grown); gc_freeze = "immortal" only where
        the object header is known (immortal.py)."""
        why = self.unsupported or (self.cfg.reload and "--reload needs every worker to "
                                   "import the code itself")
        if why and refork_enabled(self.cfg):
            self.log.warning("smartspawn: fork_worker and refork_on_memory are off: %s", why)
            patches.override_setting(self.cfg, "fork_worker", False)
            patches.override_setting(self.cfg, "refork_on_memory", False)
        if _linux.FREE_THREADED and self.cfg.oob_gc:
            self.log.warning("smartspawn: oob_gc is off: not supported on a free-threaded "
                             "CPython build, whose collector has one generation and "
                             "rules of its own for when to run")
            patches.override_setting(self.cfg, "oob_gc", False)
        why = self.cfg.gc_freeze == "immortal" and immortal.unsupported()
        if why:
            if not self.warned_immortal:  # once: a HUP reloads the same config
                self.log.warning('smartspawn: gc_freeze = "immortal" acts as True: %s', why)
                self.warned_immortal = True
            patches.override_setting(self.cfg, "gc_freeze", True)

    # -- gunicorn's main loop, extended ------------------------------------------------

    def start(self):
        if not self.smart:
            super().start()
        else:
            with patches.gunicorn_ready_withheld():  # the notifier says it (notify.py)
                super().start()
            # Read now, not at the first spawn: it parses gunicorn's and smartspawn's
            # source, thousands of objects dropped at once, and after the preloader's
            # fork their arenas stayed the master's alone, mostly empty (2.9 MiB).
            hookstate.native_attributes(type(self))
            self.make_heap_immortal()
            self.start_preloader(self.generation)
        if self.metrics is not None:
            self.metrics.start()

    def make_heap_immortal(self):
        """gc_freeze = "immortal": the master's own heap too, once, before it forks the
        first preloader. The preloader makes immortal every object it inherits, and that
        writes each header, so each page of the master's heap would exist twice, once in
        the master and once in the preloader and all it forks (measured: 12 MiB of a
        26 MiB master; docs/immortal.md). Made immortal here, they are read there."""
        if self.cfg.gc_freeze != "immortal":
            return
        gc.collect()  # garbage made immortal would never be freed
        try:
            objects, _walked, seconds = immortal.make_heap_immortal()
        except immortal.WalkFailed as exc:  # what it made immortal stays so; frozen
            self.log.warning('gc_freeze = "immortal": the master: %s; its heap is only '
                             'partly immortal', exc)
            return
        self.log.info("The master made its %d objects immortal in %.3fs", objects, seconds)

    def init_signals(self):
        super().init_signals()
        # Wakes the poll() in wait_for_signals(); gunicorn's handlers only queue.
        signal.set_wakeup_fd(self._wake_w)
        # SIG_DUMP and SIG_COMMAND: a directly spawned worker inherits this until it
        # takes them.
        signals.ignore_ours()

    def wakeup(self):
        super().wakeup()
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # already awake

    def wait_for_signals(self, timeout=1.0):
        """Wait for a signal or a spawner message; returns the signals."""
        if (self.reforker.current is not None or self.fleet.outgoing()
                or self.notifier.waiting() or self.coordinator.waiting_for_another):
            # A refork, a replacement, READY=1 or an out-of-band grant advances as
            # workers boot.
            timeout = min(timeout, 0.05)
        if self.cfg.max_worker_memory or self.cfg.refork_on_memory:
            timeout = min(timeout, self.cfg.memory_sample_interval)
        # poll, not select: with fork_worker each worker has a channel, and select()
        # fails once an fd passes FD_SETSIZE (1024).
        poller = select.poll()
        spawners = self.fleet.spawners()
        for fd in (self._wake_r, *(s.channel.fileno() for s in spawners)):
            poller.register(fd, select.POLLIN)
        readable = {fd for fd, _event in poller.poll(timeout * 1000)}
        if self._wake_r in readable:
            while True:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    break
        self.read_channels([s for s in spawners if s.channel is not None
                            and s.channel.fileno() in readable])
        signals = []
        while True:
            try:
                sig = self.SIG_QUEUE.get_nowait()
            except queue.Empty:
                return signals
            if sig != self.WAKEUP_REQUEST:
                signals.append(sig)

    def manage_workers(self):
        self.fleet.release_departed()
        self.run_worker_commands()
        self.report_soft_timeouts()
        self.manage_spawners()
        self.dispatch_spawns()
        # The refork's state is read at each step (an earlier action may have changed it).
        self.carry_out(self.lifecycle.decide(
            self.situation(), lambda: self.reforker.current is not None,
            lambda: refork_enabled(self.cfg)
            and self.reforker.ready_for_memory_refork(self.situation())))
        self.carry_out(self.reforker.decide(self.situation()))
        self.carry_out(self.coordinator.decide(self.situation()))
        self.log_reload_done()
        self.keep_worker_count()
        self.fleet.close_unused_seats()
        self.notifier.turn(self.generation, self.num_workers, self.reforker.last)
        self.publish_state()

    def situation(self):
        """What the policies need of the master this turn (actions.py)."""
        return actions.Situation(
            workers=self.num_workers, generation=self.generation, smart=self.smart,
            halting=self.stopping, reloading=self.reloading,
            preloader_starting=self.preloader_starting())

    def carry_out(self, decisions):
        """Do what a policy decided, each action as it is yielded (the policy's next step
        sees its effect)."""
        for action in decisions:
            match action:
                case actions.Replace(record=record, why=why, stat=stat):
                    self.replace(record, why, stat)
                case actions.Stop(record=record, sig=sig) if not record.exited:
                    self.kill_worker(record.pid, sig)
                case actions.Retire(spawner=spawner):
                    self.fleet.retire(spawner)
                case actions.StartRefork(reason=reason):
                    self.carry_out(self.reforker.start(reason, None, self.situation()))
                case actions.AbandonTemplate(template=template, why=why):
                    if self.reforker.current is not None:
                        self.carry_out(self.reforker.abort(why))
                    self.fleet.retire(template)
                case actions.BeginRefork(candidate=candidate):
                    self.begin_refork(candidate)
                case actions.TellCandidate(candidate=candidate, generation=generation):
                    self.tell_candidate(candidate, generation)
                case actions.GiveBack(candidate=candidate):
                    self.fleet.give_back_candidate(candidate)
                case actions.NewTemplate(template=template, generation=generation):
                    self.new_template(template, generation)
                case Grant(record=record, ask=ask) if not record.exited:
                    self.fleet.counters.set(record.slot, "oob_granted", ask)
                    self.send_orders(record)
                case Revoke(record=record) if not record.exited:
                    self.fleet.counters.set(record.slot, "oob_granted", 0)

    def report_soft_timeouts(self):
        """soft_timeout: each request past it, once (watchdog.py)."""
        if not self.cfg.soft_timeout:
            return
        for overdue in self.watchdog.overdue(self.fleet.worker_records()):
            record = overdue.record
            self.log.warning("Worker (pid: %s) soft timeout: a request has run %.1f s "
                             "(soft_timeout %g s); its stacks follow", record.pid,
                             overdue.ran, self.cfg.soft_timeout,
                             extra={"metric": "smartspawn.soft_timeouts", "value": 1,
                                    "mtype": "counter"})
            counters = self.fleet.counters
            # Before the signal: how the worker's handler tells a soft timeout.
            counters.set(record.slot, "soft_timeouts",
                         counters.get(record.slot, "soft_timeouts") + 1)
            self.send_dump(record.pid)

    def send_dump(self, pid):
        try:
            os.kill(pid, signals.SIG_DUMP)
        except OSError as exc:
            self.log.debug("Could not ask worker (pid: %s) for its stacks: %s", pid, exc)

    def replace(self, record, why, stat=None):
        """Make worker `record` outgoing: it serves until its replacement does. One of a
        refork's or a HUP's workers (no `stat`) at DEBUG: their own lines say it at INFO."""
        self.fleet.make_outgoing(record, why)
        if stat is None:
            self.log.debug("Replacing worker (pid: %s): %s", record.pid, why)
            return
        self.lifecycle.replaced(stat)
        self.log.info("Replacing worker (pid: %s): %s; it serves until its replacement "
                      "does", record.pid, why,
                      extra={"metric": "smartspawn.%s" % stat, "value": 1, "mtype": "counter"})

    def begin_refork(self, candidate):
        """Run on_refork; a hook that raises abandons that refork, not the master."""
        try:
            self.cfg.on_refork(self)
        except Exception as exc:
            self.log.exception("Exception in on_refork hook")
            self.carry_out(self.reforker.abort("on_refork raised %r" % exc))
            return
        self.fleet.make_candidate(candidate)

    def tell_candidate(self, candidate, generation):
        """The stand-in serves: the candidate may leave service now."""
        try:
            if candidate.channel is None or candidate.exited:
                raise ProcessLookupError("it has exited")
            protocol.send(candidate.channel, protocol.BecomeTemplate(generation))
            os.kill(candidate.pid, signal.SIGURG)
        except OSError as exc:
            self.carry_out(self.reforker.abort("the chosen worker is gone (%s)" % exc))

    def new_template(self, template, generation):
        """A refork's candidate is ready: it serves the spawns of `generation` now."""
        template.generation = generation
        old = self.fleet.set_template(template)
        if old is not None:
            self.fleet.retire(old)
        self.lifecycle.new_template()
        self.generation = generation

    def worker_target(self):
        """`workers`, plus the workers that serve without counting toward it: outgoing
        ones (until their replacements serve) and a refork's candidate (until it leaves
        for the template)."""
        return (self.num_workers + self.lifecycle.not_counted()
                + self.reforker.extra_workers() + self.coordinator.not_counted())

    def keep_worker_count(self):
        """gunicorn's Arbiter.manage_workers (pinned in the contract test), against
        worker_target() instead of `workers`."""
        target = self.worker_target()
        if len(self.WORKERS) < target:
            self.spawn_workers()
        # The oldest first, as gunicorn; a disabled worker last (the operator looks into it).
        disabled = {record.pid for record in self.coordinator.disabled()}
        workers = sorted(self.WORKERS.items(),
                         key=lambda item: (item[0] in disabled, item[1].age))
        while len(workers) > target:
            pid, _worker = workers.pop(0)
            self.kill_worker(pid, signal.SIGTERM)
        if self.logged_worker_count != len(workers):
            self.logged_worker_count = len(workers)
            self.log.debug("%s workers", len(workers), extra={
                "metric": "gunicorn.workers", "value": len(workers), "mtype": "gauge"})
        if self.cfg.enable_backlog_metric:
            backlog = sum(listener.get_backlog() or 0 for listener in self.LISTENERS)
            if backlog >= 0:
                self.log.debug("socket backlog: %s", backlog, extra={
                    "metric": "gunicorn.backlog", "value": backlog, "mtype": "histogram"})

    def publish_state(self):
        """Rewrite the state file for `smartspawn status`, at most once a second."""
        now = time.monotonic()
        if now - self.state_published < 1.0:
            return
        self.state_published = now
        content = snapshot.state_file(self)
        self.published = content  # one assignment: the metrics thread reads it whole
        try:
            state.write(self.state_path, content)
            self.state_dir_fd = state.held(os.path.dirname(self.state_path), self.state_dir_fd)
        except OSError as exc:
            # Once at warning: `smartspawn status` cannot see this server.
            (self.log.debug if self.state_unwritable else self.log.warning)(
                "Could not write %s: %s", self.state_path, exc)
            self.state_unwritable = True
        if self.pss_sampled is None or now - self.pss_sampled >= PSS_SAMPLE_INTERVAL:
            self.pss_sampled = now
            mib = state.total_pss(p["pid"] for p in content["processes"]) / (1024 * 1024)
            self.log.debug("Total PSS of the server: %.1f MiB", mib, extra={
                "metric": "smartspawn.pss_total_mib", "value": round(mib, 1),
                "mtype": "gauge"})

    # -- spawning -------------------------------------------------------------------------

    def spawn_workers(self):
        if not self.lifecycle.may_spawn():
            return None  # workers keep failing to boot (lifecycle.py)
        if self.spawn_failures.waiting():
            return None  # the master could not prepare the last spawn (spawn_failed)
        fleet = self.fleet
        missing = self.worker_target() - len(self.WORKERS) - len(fleet.pending)
        if fleet.current_spawner() is None:
            if not self.smart:
                for _ in range(missing):  # gunicorn's spawn_workers, with its pause
                    if self.spawn_failures.waiting():
                        break
                    self.spawn_worker()
                    time.sleep(0.1 * random.random())
                return None
            if (fleet.preloader is None and fleet.next_preloader is None
                    and self.restart_at is None and not self.stopping):
                # preloader_idle_timeout stopped the last one, and no template is alive.
                self.log.info("Starting a preloader on demand")
                self.start_preloader(self.generation + 1)
            return None  # spawning starts when the preloader is ready
        # No random sleep between spawns as in gunicorn: a fork is cheap and imports nothing.
        for _ in range(missing):
            if self.spawn_failures.waiting():
                break
            self.spawn_worker()
        return None

    def spawn_worker(self):
        self.worker_age += 1
        try:  # its heartbeat file: an fd
            worker = self.worker_class(self.worker_age, self.pid, self.LISTENERS, self.app,
                                       self.timeout / 2.0, self.cfg, self.log)
        except OSError as exc:
            self.spawn_failed(self.worker_age, "its heartbeat file", exc)
            return None
        slot = self.fleet.counters.allocate()
        spawner = self.fleet.current_spawner()
        if spawner is None:
            return self.spawn_direct(worker, slot)
        # What pre_fork and post_fork see of it (worker.py).
        worker.spawned_from = spawner.kind
        worker.spawner_pid = spawner.pid
        worker.generation = spawner.generation
        before = dict(vars(worker))
        self.cfg.pre_fork(self, worker)
        # The worker is built in the spawner: what the hook left goes with the request.
        self.fleet.queue(worker, spawner, slot,
                         self.hook_state.capture(self, worker, before))
        self.dispatch_spawns()
        return None

    def dispatch_spawns(self):
        """Send each spawner its next queued spawn request (fleet.py); none while the
        master waits after a spawn it could not prepare."""
        for record in self.fleet.to_send():
            if self.spawn_failures.waiting():
                return
            self.send_spawn_request(self.fleet.get(record.spawner_pid), record)

    def send_spawn_request(self, spawner, record):
        worker = record.worker
        if spawner is None or spawner.channel is None:  # it exited while the request waited
            self.log.error("Worker %s was not spawned: its preloader or template exited",
                           worker.age)
            self.fleet.forget_pending(worker.age)
            return
        with contextlib.ExitStack() as carried:  # what only the request needs
            try:
                fds, listeners = self.spawn_fds(record, carried)
            except NotMade as failure:
                self.fleet.forget_pending(worker.age)
                self.spawn_failed(worker.age, failure.what, failure.error)
                return
            self.fleet.sent(record)
            try:
                spawner.request_spawn(worker.age, record.slot, fds, len(listeners),
                                      hook_state=record.pre_fork_state is not None)
            except OSError as exc:
                # The spawner has just exited: its exit is logged (and handled) with its
                # EOF in read_channels(); the worker is asked of the next spawner.
                self.log.info("Spawn request to %r failed: %s", spawner, exc)
                self.fleet.forget_pending(worker.age)

    def spawn_fds(self, record, carried):
        """The fds a spawn request carries: the heartbeat, what pre_fork left (a memfd),
        the worker's channel (fork_worker), its seat's sockets (reuse_port); and the
        listeners. What only the request needs is closed by `carried` once it is sent.
        Raises NotMade: no fd left (EMFILE), or a seat that cannot be bound."""
        fds = [record.worker.tmp.fileno()]
        if record.pre_fork_state is not None:
            with making("what pre_fork left for it"):
                state_fd = hookstate.to_memfd(record.pre_fork_state)
            carried.callback(os.close, state_fd)
            fds.append(state_fd)
        if refork_enabled(self.cfg):
            with making("its channel"):
                record.channel, child_end = protocol.channel_pair()
            carried.callback(child_end.close)
            record.channel.setblocking(False)
            fds.append(child_end.fileno())
        listeners = []
        if per_worker_sockets(self.cfg):
            with making("its listening sockets (reuse_port)"):
                listeners = self.seat_for(record)
            fds += [listener.fileno() for listener in listeners]
        return fds, listeners

    def seat_for(self, record):
        """The worker's own sockets (reuse_port), bound here, as root, as gunicorn's worker
        binds them before it drops privileges (a port below 1024 with `user`); a seat of
        the same addresses is handed on (fleet.seat_for)."""
        leaving = {r.pid for r in self.fleet.outgoing()}
        if self.reforker.leaving() is not None:
            leaving.add(self.reforker.leaving())
        listeners = self.fleet.seat_for(record, leaving, tuple(self.cfg.address),
                                        lambda: patches.bind_once(self.cfg, self.log))
        for listener in listeners:
            # A HUP may have changed `backlog`: listen() again takes the new one, and
            # keeps the connections queued on the socket.
            listener.listen(self.cfg.backlog)
        return listeners

    def spawn_failed(self, age, what, exc):
        """The master could not prepare worker `age`: that spawn fails, the master waits
        before the next one (SPAWN_FAILURE_DELAYS), and the workers keep serving."""
        delay = self.spawn_failures.failed()
        hint = ""
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            hint = " (the master holds fds per worker: see docs/troubleshooting.md)"
        self.log.error("Worker %s was not spawned: the master could not make %s: %s%s; "
                       "the next spawn in %ss", age, what, exc, hint, delay)

    def spawn_direct(self, worker, slot):
        """gunicorn's own spawn: fork from the master, the worker imports the app."""
        worker.generation = self.generation
        worker.spawner_pid = self.pid
        worker.template_class = Template
        worker.counters = self.fleet.counters
        worker.slot = slot
        spawned_mtime = worker.tmp.last_update()
        master_end = child_end = None
        if refork_enabled(self.cfg):
            try:
                master_end, child_end = protocol.channel_pair()
            except OSError as exc:
                worker.tmp.close()
                self.fleet.counters.release(slot)
                self.spawn_failed(worker.age, "its channel", exc)
                return None
        self.cfg.pre_fork(self, worker)
        with self.threads_stopped():
            pid = os.fork()
        if pid:
            if child_end is not None:
                child_end.close()
                master_end.setblocking(False)
            self.fleet.add_direct(worker, pid, self.generation, slot, master_end,
                                  spawned_mtime)
            self.spawn_failures.succeeded()
            patches.count(self, "workers_spawned")
            return pid
        try:  # the child (close_master_only ran at the fork); never unwinds into the loop
            if master_end is not None:
                master_end.close()
                worker.channel = child_end
            become_worker(self, worker)
        finally:
            os._exit(1)

    def worker_spawned(self, spawner, age, pid):
        """`spawner`'s standby `pid` took the request for worker `age`."""
        if age not in self.fleet.pending:
            self.log.warning("Worker %s (pid: %s) checked in after its spawn request was "
                             "given up; stopping it", age, pid)
            self.fleet.kill_standby(spawner, pid)
            return
        record = self.fleet.checked_in(age, pid)
        self.spawn_failures.succeeded()
        patches.count(self, "workers_spawned")
        if record.spawned_from == "preloader":
            self.restarts.succeeded()  # a preloader that spawns is a healthy one
        if not self.stopping:
            self.dispatch_spawns()
        latency_ms = (time.monotonic() - record.asked_at) * 1000
        self.spawn_latency.observe(latency_ms / 1000)
        self.log.debug("Worker %s (pid: %s) checked in %.1f ms after its spawn request",
                       age, pid, latency_ms, extra={"metric": "smartspawn.spawn_latency",
                                                    "value": latency_ms, "mtype": "histogram"})
        if self.stopping:
            self.kill_worker(pid, signal.SIGTERM)
        elif spawner.retiring:
            # Asked for before a HUP's switch: its generation is being replaced.
            self.replace(record, "its %r retired" % spawner)

    # -- forks from the master --------------------------------------------------------------

    @contextlib.contextmanager
    def threads_stopped(self):
        """Within: the master runs no thread but its main one (the control socket's and
        the metrics server's are stopped), so that a child forked now inherits no lock
        that a thread held, and CPython 3.12+ has no thread to warn about."""
        with patches.control_thread_stopped(self), \
                (self.metrics.stopped() if self.metrics else contextlib.nullcontext()):
            yield

    def note_fork(self):
        # os.getppid() in the child cannot tell: a grandchild whose parent has exited
        # already is re-parented to the master (a subreaper).
        self.forking = os.getpid() == getattr(self, "pid", None)
        if self.forking and self.metrics is not None:
            self.metrics.before_fork()  # a fork not made in threads_stopped()

    def forked(self):
        """At every fork, in the parent."""
        if os.getpid() == getattr(self, "pid", None) and self.metrics is not None:
            self.metrics.after_fork_in_parent()

    def close_master_only(self):
        """At every fork from the master, in the child: close what only the master holds.

        Whoever forks: smartspawn (a preloader, a direct spawn), gunicorn (its workers, a
        respawned dirty arbiter) or a hook's os.fork(). A kept copy of a spawner's channel
        would hide its EOF; another worker's heartbeat or channel would leak into every
        process forked from this child. Also the signal wakeup fd: its number may be
        reused in the child, and a signal would write a byte into that file; and the state
        directory: a child holding it would look like a master to `smartspawn status`.
        """
        if not self.forking:
            return  # a fork in some other process of the tree (at-fork hooks are inherited)
        self.forking = False
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.state_dir_fd is not None:
            os.close(self.state_dir_fd)
        self.fleet.close_in_child()
        if self.metrics is not None:
            self.metrics.close_in_child()

    def murder_workers(self):
        """gunicorn's heartbeat check, which a disabled worker is left out of: the operator
        may be holding it still (gdb, kill -STOP)."""
        disabled = {record.pid: self.WORKERS.pop(record.pid)
                    for record in self.coordinator.disabled() if record.pid in self.WORKERS}
        try:
            super().murder_workers()
        finally:
            self.WORKERS.update(disabled)

    def kill_worker(self, pid, sig):
        if sig == signal.SIGABRT and pid in self.WORKERS:
            # gunicorn sends SIGABRT only for WORKER TIMEOUT (murder_workers, pinned in
            # the contract test): the worker writes its stacks first. faulthandler cannot
            # take SIGABRT itself, one of its fatal signals; both pending, the kernel
            # delivers SIGABRT first, whose Python handler runs only after SIG_DUMP's
            # C-level dump.
            self.send_dump(pid)
        record = self.fleet.get(pid)
        if sig in STOP_SIGNALS and record is not None:
            # First the refork it may be the candidate of (it is a worker again then).
            self.carry_out(self.reforker.worker_stopping(record, sig))
            # A worker stopped on purpose (a HUP, TTOU, a replacement) before it served
            # did not fail to boot (lifecycle.count_boot_failures).
            self.fleet.told_to_stop(pid)
        super().kill_worker(pid, sig)

    # -- reaping ---------------------------------------------------------------------------

    def reap_workers(self):
        # A worker's WorkerSpawned is written before it can exit: read it first, so that
        # gunicorn's reaper knows the pid.
        self.read_channels(self.fleet.spawners())
        self.templates_exited(self.fleet.reap())
        self.fleet.note_booted()  # before gunicorn's reaper closes their heartbeats
        try:
            super().reap_workers()
        except HaltServer:
            # Forked from one preloader, workers whose app cannot start fail within
            # milliseconds of each other: one is reaped while the first one's halt stops
            # the server. gunicorn's stop() would let this second HaltServer out (exit 1,
            # with a traceback) instead of the first one's exit code.
            if not self.stopping:
                raise
            self.log.debug("A worker failed to boot while the server was stopping")
        # Forget the helpers gunicorn's waitpid(-1) just reaped.
        self.templates_exited(self.fleet.reap())
        self.lifecycle.count_boot_failures(self.fleet.release_departed(), self.stopping)

    def templates_exited(self, workers):
        """A template was a worker, and is one to the hooks: gunicorn's child_exit."""
        for worker in workers:
            self.cfg.child_exit(self, worker)

    # -- signals -----------------------------------------------------------------------------

    def handle_hup(self):
        if not self.smart:
            # gunicorn's reload spawns from the master, which loads the new code: the
            # template (old code) must not serve those spawns.
            self.carry_out(self.reforker.end_generation())
            self.reloading = True  # its manage_workers() must start no refork
            self.notifier.reload_started(None)  # READY=1 once gunicorn's reload returns
            try:
                super().handle_hup()
            finally:
                self.reloading = False
            self.notifier.reloaded(self.generation, self.num_workers)
            return None
        self.log.info("Hang up: %s", self.master_name)
        self.notifier.reload_started(self.generation + 1)
        if not self.reload_config():
            return None
        if self.cfg.reload:
            self.fall_back_to_direct_spawning()
            return None
        if self.reforker.current is not None:
            self.carry_out(self.reforker.abort("HUP", failed=False))
        if self.fleet.next_preloader is not None:
            self.log.info("HUP supersedes the reload already booting in %r",
                          self.fleet.next_preloader)
            self.fleet.retire(self.fleet.next_preloader)
        self.start_preloader(self.generation + 1, next_generation=True)
        if self.dirty_arbiter_pid:
            self.kill_dirty_arbiter(signal.SIGHUP)
        return None

    def fall_back_to_direct_spawning(self):
        """A HUP turned --reload on: every worker must import the code itself, as with
        gunicorn's reload; the preloader and the template retire with their workers."""
        self.log.warning("smartspawn: falling back to direct spawning: this HUP turned "
                         "--reload on (it restarts workers that import the app themselves)")
        self.smart = False
        fleet = self.fleet
        for spawner in (fleet.preloader, fleet.next_preloader):
            if spawner is not None:
                fleet.retire(spawner)
        self.carry_out(self.reforker.end_generation())
        self.generation += 1
        for record in fleet.worker_records():
            if not record.outgoing:
                self.replace(record, "HUP: --reload, spawning directly")
        if self.dirty_arbiter_pid:
            self.kill_dirty_arbiter(signal.SIGHUP)

    def handle_usr1(self):
        super().handle_usr1()
        self.fleet.signal_helpers(signal.SIGUSR1)  # they write to the same log files

    def handle_urg(self):
        if not self.reforker.enabled:
            self.log.info("URG ignored: fork_worker is off")
            return
        self.carry_out(self.reforker.request("URG", self.situation()))

    def reload_failed(self, why):
        """A HUP failed (logged already): generation `self.generation` keeps serving."""
        self.notifier.reload_failed(why, self.generation, self.num_workers)

    def setup(self, app):
        # Runs on HUP only: the first setup() ran before the switch to this class.
        super().setup(app)
        for warning in install_settings(self.cfg):
            self.log.warning(warning)
        self.log_memory_share()
        self.turn_off_what_cannot_work()
        self.worker_class = worker_class_for(self.cfg)
        serving_at = self.metrics.address if self.metrics else None
        if self.cfg.metrics_bind != serving_at:
            self.log.warning("metrics_bind = %r takes effect on USR2 (re-exec), not HUP; "
                             "still %s", self.cfg.metrics_bind,
                             "serving at %s" % serving_at if serving_at else "off")

    def stop(self, graceful=True):
        self.stopping = True
        self.notifier.stopping()
        if self.metrics is not None:
            self.metrics.stopping = True
        fleet = self.fleet
        fleet.drop_queued()  # gunicorn spawns nothing once it stops; nor do we
        self.read_channels(fleet.spawners())  # workers forked just now stop too
        for spawner in fleet.spawners():
            fleet.retire(spawner)
        fleet.close_seats()
        super().stop(graceful)
        fleet.close_all()
        self.templates_exited(fleet.wait_all(deadline=time.monotonic() + 2.0))
        state.remove(self.state_path)
        if self.state_dir_fd is not None:
            os.close(self.state_dir_fd)
            self.state_dir_fd = None
        if self.metrics is not None:
            self.metrics.close()

    # -- the control socket (called from its thread: only reads, or queues a signal) ----

    def worker_fields(self, pid):
        return snapshot.control_socket_worker(self.fleet, pid)

    def smartspawn_stats(self):
        return snapshot.control_socket_stats(self)

    def queue_refork(self):
        """The control socket's `refork`: the same as `kill -URG <master>`."""
        self.SIG_QUEUE.put_nowait(signal.SIGURG)
        self.wakeup()
        return {"status": "refork requested" if refork_enabled(self.cfg)
                else "ignored: fork_worker is off"}

    # -- the operator's orders to one worker: `worker disable|enable|dump PID` --------------

    WORKER_VERBS = ("disable", "enable", "dump")  # each runs <verb>_worker(record)

    def queue_worker_command(self, verb, pid):
        """The control socket's thread: checked here, carried out by the master's loop."""
        if pid not in self.WORKERS:
            raise ValueError("%s is not the pid of a worker of this server (gunicornc -c "
                             "'show workers' lists them)" % pid)
        if verb == "disable" and not self.worker_class.can_disable:
            raise ValueError("%s workers cannot stop accepting while they run: use "
                             "`worker kill %s`" % (self.worker_class.__name__, pid))
        record = self.fleet.get(pid)  # read only: the loop changes it
        if verb in ("disable", "enable") and record is not None:
            if record.disabled == (verb == "disable"):
                return {"status": "already %sd" % verb, "pid": pid}
            if record.state not in (State.SERVING, State.OUTGOING):
                raise ValueError("worker %s is %s" % (pid, record.state.value))
        self.worker_commands.put_nowait((verb, pid))
        self.wakeup()
        return {"status": "%s requested" % verb, "pid": pid}

    def run_worker_commands(self):
        while True:
            try:
                verb, pid = self.worker_commands.get_nowait()
            except queue.Empty:
                return
            record = self.fleet.get(pid)
            if (record is None or record.exited or record.slot is None
                    or record.state not in (State.SERVING, State.OUTGOING)):
                # Gone, stopping, or leaving for the template since it was asked.
                self.log.warning("worker %s %s: not done, it is no longer a serving "
                                 "worker", verb, pid)
                continue
            getattr(self, "%s_worker" % verb)(record)

    def dump_worker(self, record):
        self.log.info("Worker (pid: %s): writing its stacks to the error log (control "
                      "socket: worker dump)", record.pid)
        self.send_dump(record.pid)

    def disable_worker(self, record):
        if record.disabled:
            return
        self.coordinator.disable(record)
        self.fleet.counters.set(record.slot, "disabled", 1)
        self.send_orders(record)
        self.log.info("Worker (pid: %s) disabled (worker disable): it finishes its requests "
                      "and accepts no more; another worker is spawned in its place", record.pid)

    def enable_worker(self, record):
        if not record.disabled:
            return
        self.carry_out(self.coordinator.enable(record))
        self.fleet.counters.set(record.slot, "disabled", 0)
        self.send_orders(record)
        self.log.info("Worker (pid: %s) enabled (worker enable): it accepts again",
                      record.pid)

    def send_orders(self, record):
        """Wake the worker to read what the master wrote in its slot."""
        try:
            os.kill(record.pid, signals.SIG_COMMAND)
        except ProcessLookupError:
            pass  # exited: reaped at the next turn

    # -- spawners: the preloader and templates --------------------------------------------

    def start_preloader(self, generation, next_generation=False):
        """Fork a preloader for `generation`: the preloader, or (a HUP) the next one."""
        try:
            with self.threads_stopped():
                pid, channel = start_preloader(self, generation)
        except OSError as exc:  # no fd left for its channel (EMFILE), no process (EAGAIN)
            if not self.ever_ready:
                raise  # at start: gunicorn's own failures to start end the server too
            self.preloader_not_started(exc, next_generation)
            return
        preloader = self.fleet.add_preloader(pid, channel, generation,
                                             self.cfg.preloader_boot_timeout, next_generation)
        if next_generation:  # a HUP's one line when it starts (its end: log_reload_done)
            self.log.info("Reload to generation %s (HUP): %r started, loading the app",
                          generation, preloader)
        else:
            self.log.info("Started %r", preloader)

    def preloader_not_started(self, exc, next_generation):
        if next_generation:
            self.log.error("Reload failed: could not start a preloader: %s; generation %s "
                           "keeps serving", exc, self.generation)
            self.reload_failed("could not start a preloader: %s" % exc)
            return
        delay = self.restarts.failed()
        self.restart_at = self.restarts.until
        self.log.error("Could not start a preloader: %s; the next attempt in %ss", exc, delay)

    def preloader_starting(self):
        """True while no preloader is ready because one is (re)starting."""
        preloader = self.fleet.preloader
        return self.smart and (self.restart_at is not None
                               or (preloader is not None and not preloader.ready))

    def manage_spawners(self):
        now = time.monotonic()
        fleet = self.fleet
        for preloader in (fleet.preloader, fleet.next_preloader):
            if (preloader and not preloader.ready and preloader.boot_deadline
                    and now > preloader.boot_deadline and preloader.failure is None):
                limit = preloader.boot_deadline - preloader.started_at
                self.log.error("%r did not load the app within %.1fs "
                               "(preloader_boot_timeout); killing it", preloader, limit)
                preloader.failure = protocol.BootFailed(
                    WORKER_BOOT_ERROR, "app import took longer than %.1fs" % limit)
                fleet.kill(preloader)
        for record in fleet.overdue(now):
            if record.worker.age in fleet.pending:
                self.spawn_overdue(record)
        fleet.close_retired()
        standby = fleet.unneeded_standby()
        if standby is not None:
            self.log.debug("%r: its standby (pid: %s) stopped while %r spawns",
                           fleet.preloader, standby, fleet.template)
            fleet.kill_standby(fleet.preloader, standby, signal.SIGTERM)
        if self.smart and fleet.preloader is None and fleet.next_preloader is None \
                and self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            # It imports the code on disk now, maybe not the running generation's.
            self.start_preloader(self.generation + 1)

    def spawn_overdue(self, record):
        spawner = self.fleet.get(record.spawner_pid)
        self.log.error("Spawn of worker %s got no answer within %.0fs from %r; "
                       "killing it", record.worker.age, SPAWN_TIMEOUT, spawner)
        self.fleet.forget_pending(record.worker.age)
        if spawner is not None:
            spawner.stuck = True
            self.fleet.kill(spawner)
            # Its standby reads the requests: it may be the one stuck (stopped), and it
            # holds a copy of the channel, whose EOF would then never come (spawner_gone).
            if spawner.standby_pid is not None:
                self.fleet.kill_standby(spawner, spawner.standby_pid)
            for other in self.fleet.pending_of(spawner.pid):
                self.fleet.forget_pending(other.worker.age)

    def read_channels(self, spawners):
        for spawner, message in self.fleet.read(spawners):
            self.handle_message(spawner, message)

    def handle_message(self, spawner, message):
        match message:
            case protocol.SpawnerReady(boot_seconds=seconds):
                if spawner.state is State.CANDIDATE:
                    # A template now, of its refork's generation (NewTemplate).
                    self.fleet.template_ready(spawner)
                    self.carry_out(self.reforker.template_ready(spawner, seconds))
                    self.heap_made_immortal(spawner, message)
                else:
                    self.heap_made_immortal(spawner, message)
                    self.fleet.spawner_ready(spawner)
                    self.preloader_ready(spawner, seconds)
            case protocol.BootFailed():
                spawner.failure = message
            case protocol.StandbyReady(pid=pid) if self.is_new_child(pid):
                self.fleet.standby_ready(spawner, pid)
            case protocol.StandbyReady(pid=pid) if not self.is_child(pid):
                # It wrote this, saw its spawner die (EOF) and exited, and gunicorn's
                # waitpid(-1) reaped it as unknown before we read it: nothing to track.
                # (A pid that was never ours is not tracked either.)
                self.log.debug("%r: its standby (pid: %s) is gone already", spawner, pid)
            case protocol.WorkerSpawned(age=age, pid=pid) if pid == spawner.standby_pid:
                self.worker_spawned(spawner, age, pid)
            case protocol.SpawnFailed(age=age, reason=reason):
                self.log.error("%r could not fork worker %s: %s", spawner, age, reason)
                self.fleet.forget_pending(age)
                self.dispatch_spawns()
            case ChannelClosed():
                self.spawner_gone(spawner)
            case ChannelBroken(error=error):
                if spawner.failure is None:
                    spawner.failure = protocol.BootFailed(WORKER_BOOT_ERROR,
                                                          "broken channel: %s" % error)
                self.spawner_gone(spawner)
            case _:  # including a pid that is no child of ours, or not the standby's
                self.handle_message(spawner, self.fleet.broken(
                    spawner, "unexpected %r" % (message,)))

    def heap_made_immortal(self, spawner, message):
        if message.immortal_objects is None:
            return  # gc_freeze is not "immortal"
        objects, walked = message.immortal_objects, message.immortal_walked
        seconds = message.immortal_seconds
        spawner.immortal = {"objects": objects, "walked": walked, "seconds": round(seconds, 3)}
        # At start; a HUP's or a refork's is one of their details.
        (self.log.debug if self.ever_ready else self.log.info)(
            "%r made %d objects immortal in %.3fs (it went through %d: %.2fs "
            "per million)", spawner, objects, seconds, walked, seconds * 1e6 / max(walked, 1),
            extra={"metric": "smartspawn.immortal_objects", "value": objects, "mtype": "gauge"})
        self.log.debug("immortal pass", extra={"metric": "smartspawn.immortal_pass.duration",
                                               "value": seconds * 1e3, "mtype": "timer"})

    def is_new_child(self, pid):
        """True if `pid`, named by a spawner, is a child of ours we know nothing of yet:
        the only pid a spawner's message may make the master track (and later signal)."""
        known = self.fleet.get(pid)
        if (pid in self.WORKERS or (known is not None and not known.exited)
                or pid in (self.pid, self.dirty_arbiter_pid, self.reexec_pid)):
            return False
        return self.is_child(pid)

    @staticmethod
    def is_child(pid):
        """True if `pid` is a child of ours, running or not reaped yet."""
        try:
            # WNOWAIT: a child that has exited already is left for the reaper.
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except OSError:  # ChildProcessError: not our child (or reaped)
            return False
        return True

    def preloader_ready(self, preloader, seconds):
        # The restarts' backoff is reset by its first worker (worker_spawned), not here: a
        # preloader killed as stuck after every restart would restart without a pause.
        self.ever_ready = True
        # A HUP's is one of its details.
        (self.log.debug if preloader is self.fleet.next_preloader else self.log.info)(
            "%r loaded the app in %.3fs", preloader, seconds)
        if preloader is self.fleet.next_preloader:
            self.switch_generation()
        elif preloader is self.fleet.preloader:
            self.generation = max(self.generation, preloader.generation)

    def switch_generation(self):
        """A HUP's new preloader is ready: its workers replace the old generation's.

        Spawn before retire, as for max_requests (lifecycle.py): every old worker is
        outgoing, so manage_workers() spawns its replacement from the new preloader, and
        the old ones are stopped once `workers` new ones serve.
        """
        fleet = self.fleet
        old = fleet.switch_preloader()
        self.generation = fleet.preloader.generation
        if old is not None:
            fleet.retire(old)
        self.carry_out(self.reforker.end_generation())
        old_workers = [record for record in fleet.worker_records()
                       if record.generation < self.generation and not record.outgoing]
        # One line for them all (not one per worker, as replace() logs).
        self.log.debug("Generation %s is ready; replacing the %s workers of the previous "
                       "generation (pid: %s)", self.generation, len(old_workers),
                       ", ".join(str(record.pid) for record in old_workers))
        for record in old_workers:
            fleet.make_outgoing(record, "HUP: generation %s" % self.generation)
        self.reload_under_way = (self.generation, len(old_workers),
                                 fleet.preloader.started_at)

    def log_reload_done(self):
        """A HUP's one line when it ends: no worker of an older generation is left."""
        if self.reload_under_way is None or self.stopping:
            return
        generation, replaced, started = self.reload_under_way
        if any(record.generation < generation for record in self.fleet.worker_records()):
            return
        self.reload_under_way = None
        self.log.info("Reload to generation %s (HUP) done in %.2fs: %s workers replaced",
                      generation, time.monotonic() - started, replaced)

    def spawner_gone(self, spawner):
        """The spawner's channel is closed: it has exited (its status is reaped apart)."""
        fleet = self.fleet
        for record in fleet.pending_of(spawner.pid):
            self.log.error("Worker %s was not spawned: %r exited", record.worker.age, spawner)
            fleet.forget_pending(record.worker.age)
        if spawner.retiring or self.stopping:
            return
        if spawner.role is Role.TEMPLATE or spawner.state is State.CANDIDATE:
            self.carry_out(self.reforker.template_gone(spawner))
            if spawner is fleet.template:
                fleet.drop_template(spawner)
                self.log.error("%r exited; spawning from the %s", spawner,
                               "preloader" if self.smart else "master")
            return
        detail = ": %s" % spawner.failure.reason if spawner.failure else ""
        if spawner is fleet.next_preloader:
            fleet.drop_preloader(spawner)
            self.log.error("Reload failed: %r exited before it loaded the app%s; "
                           "generation %s keeps serving", spawner, detail, self.generation)
            self.reload_failed("the preloader exited before it loaded the app%s" % detail)
            return
        fleet.drop_preloader(spawner)
        if not self.ever_ready and fleet.next_preloader is None:
            code = spawner.failure.exit_code if spawner.failure else WORKER_BOOT_ERROR
            reason = ("App failed to load." if code == APP_LOAD_ERROR
                      else "Worker failed to boot.")
            raise HaltServer("%s (%r exited%s)" % (reason, spawner, detail), code)
        delay = self.restarts.failed()
        self.restart_at = self.restarts.until
        serving = "the workers keep serving" if self.WORKERS else "no worker is serving"
        self.log.error("%r exited%s; %s; a new preloader starts in %ss",
                       spawner, detail, serving, delay)

    # -- HUP --------------------------------------------------------------------------

    def reload_config(self):
        """gunicorn's Arbiter.reload() up to its spawn loop; spawning is the preloader's.

        A copy, not a wrapper: after its spawn loop, Arbiter.reload() waits (up to
        graceful_timeout) for every old worker to exit, which would block the master
        while the new preloader imports. Unlike gunicorn, a configuration that fails to
        load keeps the running one (and its workers) instead of stopping the master.
        Returns whether it loaded.
        """
        patches.count(self, "reloads")
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
            self.reload_failed("the configuration did not load")
            return False
        self.setup(self.app)
        self.log.reopen_files()
        if old_address != self.cfg.address:
            for listener in self.LISTENERS:
                listener.close()
            self.LISTENERS = []
            if per_worker_sockets(self.cfg):
                # Each worker listens on a seat of its own (seat_for). Unlike gunicorn's
                # reload, the master binds nothing: a socket of its own in the port's
                # reuse_port group would take its share of the connections, and nobody
                # accepts there.
                self.log.info("Listening at: %s (a socket per worker: reuse_port)",
                              ",".join(self.cfg.bind))
            else:
                self.LISTENERS = sock.create_sockets(self.cfg, self.log)
                self.log.info("Listening at: %s",
                              ",".join(str(lnr) for lnr in self.LISTENERS))
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


class NotMade(Exception):
    """What the master could not make for a spawn (`what`), and the OSError why."""

    def __init__(self, what, error):
        super().__init__(what, error)
        self.what, self.error = what, error


@contextlib.contextmanager
def making(what):
    """Within: an OSError is a NotMade of `what`."""
    try:
        yield
    except OSError as exc:
        raise NotMade(what, exc) from exc


def set_config_env(cfg, on):
    """Apply (on) or undo (off) the `raw_env` variables of `cfg`, as gunicorn's reload does."""
    for key, value in cfg.env.items():
        if on:
            os.environ[key] = value
        elif key in cfg.env_orig:
            os.environ[key] = cfg.env_orig[key]
        else:
            os.environ.pop(key, None)
