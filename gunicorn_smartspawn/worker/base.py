"""The worker classes (`-k smartspawn.Worker`) and the life of a worker process.

To gunicorn's master a smartspawn worker is an ordinary worker: same heartbeat file,
same signals. Past `max_requests` it does not stop by itself: it asks the master for a
replacement and serves until that one does (lifecycle.py). What it adds is where it came
from, for hooks (`post_fork`) and logs:

- ``worker.spawned_from``: ``"master"`` (direct spawning), ``"preloader"`` or
  ``"template"`` (a warmed worker, after a refork);
- ``worker.spawner_pid``: the pid of the process it was forked from;
- ``worker.generation``: 1 at start, +1 for each HUP and each refork.

With `fork_worker` on, a worker also holds a channel to the master: on SIGURG it stops
accepting, finishes its requests and becomes the template (template.py).
"""
import atexit
import errno
import os
import select
import signal
import socket
import sys
import threading
import time

from gunicorn import sock, util
from gunicorn.errors import AppImportError
from gunicorn.workers import base, gthread, sync
from gunicorn.workers.workertmp import WorkerTmp

from gunicorn_smartspawn.shared.signals import SIG_COMMAND, SIG_DUMP
from gunicorn_smartspawn.worker import appsignals, deadline, forkgate
from gunicorn_smartspawn.worker.oob import OutOfBand

# gunicorn's Arbiter.WORKER_BOOT_ERROR / APP_LOAD_ERROR: the master halts on these.
WORKER_BOOT_ERROR = 3
APP_LOAD_ERROR = 4
# A worker forked from a template that could not boot: not a reason to halt the server
# (the master abandons a template whose workers keep failing, see lifecycle.py).
TEMPLATE_CHILD_BOOT_ERROR = 5
# A worker past max_requests that the master has not replaced within this many seconds
# stops by itself, as gunicorn's workers do.
RETIRE_FALLBACK = 60.0


class SmartWorkerMixin:
    spawned_from: str = "master"  # "master" | "preloader" | "template" (module doc)
    spawner_pid: int | None = None
    generation: int = 1
    server = None             # the arbiter, as copied into this process
    slot = None               # this worker's slot in the counters
    counters = None           # the master's per-worker counters (counters.py), shared:
                              # handed in by whoever built the worker
    seat = None               # with reuse_port: its sockets in the master's table
    channel = None            # to the master, with fork_worker only
    template_requested = False
    template_class: type | None = None  # what it becomes on SIGURG (a Template)
    retire_after = sys.maxsize  # max_requests (+ jitter), when the master replaces us
    retire_asked = None       # when we asked the master for a replacement
    # The master's record of this worker (lifecycle.py): its last memory sample, the
    # samples in a row above max_worker_memory, and whether it was seen serving.
    uss = rss = None
    over_limit = 0
    served = False
    pre_fork_state = None     # what pre_fork left, pickled for the spawner (hookstate.py)
    # The signal dispositions the app's import installed (appsignals.py): recorded by the
    # spawner that imported it, or by this worker when it imports the app itself.
    app_signals = None

    @property
    def preloaded(self) -> bool:
        """True when forked from a process that already loaded the app (Passenger's `forked`)."""
        return self.spawned_from != "master"

    def init_signals(self):
        super().init_signals()
        # The master's URG handler (direct spawns) or the spawner's SIG_IGN is inherited.
        signal.signal(signal.SIGURG, self.handle_urg if self.channel else signal.SIG_DFL)
        signal.signal(SIG_COMMAND, self.handle_command)
        # Orders come at any moment, mid-request too: they must not interrupt the app's
        # system calls (EINTR), as gunicorn keeps TERM and USR1 from doing.
        signal.siginterrupt(SIG_COMMAND, False)
        # Orders the master wrote before the handler was in place (a worker disabled as
        # it booted) are read as if they came now.
        self.handle_command(SIG_COMMAND, None)
        self.deadlines.take_dump_signal()

    def handle_usr1(self, sig, frame):
        super().handle_usr1(sig, frame)  # reopens the log files
        self.deadlines.take_dump_signal()

    def own_signals(self):
        """Signals the app's dispositions must not replace in this worker: the master's
        orders and stack dumps, and with fork_worker URG, how the master asks for a
        template."""
        ours = {SIG_COMMAND, SIG_DUMP}
        return ours | {signal.SIGURG} if self.channel is not None else ours

    # -- the master's orders: in our slot of the counters, then SIG_COMMAND ---------------
    disabled = False          # taken out of rotation by the operator (`worker disable`)
    can_disable = False       # the class can stop accepting and start again (accepting_changed)
    serves_one_at_a_time = False  # the sync worker: one request, on the main thread
    keepalive_setting = None  # `keepalive`, while disabled (close_kept_alive_connections)

    def handle_command(self, sig, frame):
        """SIG_COMMAND's handler: the sync worker reads its orders in wait(), woken by
        gunicorn's wakeup pipe; the others override this to read them on their loop."""
        self.orders_pending = True

    orders_pending = False

    def read_orders(self):
        """Carry out what the master wrote in our slot: disabled or not, an out-of-band
        grant (oob.py)."""
        self.orders_pending = False
        if self.slot is None:
            return
        disabled = bool(self.counters.get(self.slot, "disabled"))
        if disabled != self.disabled:
            self.disabled = disabled
            self.log.info("Worker %s by the operator: %s", "disabled" if disabled
                          else "enabled", "it accepts no connection; its requests finish"
                          if disabled else "it accepts connections again")
            self.accepting_changed()
        if self.oob is not None:
            self.oob.master_spoke()

    def accepting_changed(self):
        """`disabled` changed: stop or start accepting (each worker class)."""

    @classmethod
    def before_app_import(cls):
        """In the preloader, before it imports the app (gevent monkey-patches here)."""

    def handle_urg(self, sig, frame):
        if not self.alive:
            return  # already stopping (TERM): it becomes nothing
        super().handle_exit(sig, frame)  # stop accepting; in-flight requests finish
        self.template_requested = True

    def stop_serving(self):
        """Leave the serving loop once in-flight requests are done (as gunicorn's TERM)."""
        self.alive = False

    def handle_exit(self, sig, frame):
        self.template_requested = False  # TERM wins: a stopping worker becomes nothing
        super().handle_exit(sig, frame)

    def init_process(self):
        self.in_flight_lock = threading.Lock()
        self.deadlines = deadline.Deadlines(self)
        deadline.install(self.deadlines)
        if self.slot is not None:
            forkgate.on_unsafe(lambda: self.counters.set(self.slot, "fork_unsafe", 1))
            # Spawn before retire: past max_requests this worker keeps serving until the
            # master has a replacement serving, then is stopped (lifecycle.py).
            self.retire_after, self.max_requests = self.max_requests, sys.maxsize
        super().init_process()

    def handle_request(self, *args):
        self.request_began()
        try:
            return super().handle_request(*args)
        finally:
            self.request_ended()

    # Requests in flight, for `smartspawn status`: gthread serves several at once on its
    # threads, whose `+= 1` could interleave; the lock costs about 0.1 µs a request. The
    # event-loop workers call these two on their loop (asgi.py), gevent on its greenlets.
    in_flight = 0
    in_flight_lock = None  # made in each worker: a lock must not cross a fork

    def request_began(self):
        self.deadlines.began()
        with self.in_flight_lock:
            self.in_flight += 1
            if self.slot is not None:
                self.counters.set(self.slot, "in_flight", self.in_flight)

    def request_ended(self):
        self.deadlines.ended()
        with self.in_flight_lock:
            self.in_flight -= 1
            if self.slot is not None:
                self.counters.set(self.slot, "in_flight", self.in_flight)
                self.counters.set(self.slot, "last_request_us", int(time.monotonic() * 1e6))
                self.counters.set(self.slot, "requests", self.nr)
        if self.nr >= self.retire_after:
            self.ask_for_replacement()

    def ask_for_replacement(self):
        if self.retire_asked is None:
            self.retire_asked = time.monotonic()
            self.counters.set(self.slot, "retire", 1)
            try:
                # Wakes the master's loop now (a no-op reap) instead of at its next turn.
                os.kill(self.ppid, signal.SIGCHLD)
            except OSError:
                pass
            self.log.info("Worker served %s requests (max_requests): the master replaces "
                          "it before it stops", self.nr)
        elif self.alive and time.monotonic() - self.retire_asked > RETIRE_FALLBACK:
            self.log.warning("No replacement within %.0fs: autorestarting worker after "
                             "current request.", RETIRE_FALLBACK)
            self.stop_serving()

    def run(self):
        # gthread closes the listeners when it stops serving: a template needs copies
        # (of the shared ones; with reuse_port each worker gets its own from the master).
        keep = self.channel is not None and not per_worker_sockets(self.cfg)
        listener_fds = [os.dup(s.fileno()) for s in self.sockets] if keep else []
        super().run()
        if self.template_requested:
            self.template_class(self, listener_fds).run()
        else:
            for fd in listener_fds:
                os.close(fd)

    def loop_library_fds(self):
        """The fds an event-loop library keeps for the whole process once the worker's
        loop is closed (uvloop: libuv's signal pipe, which libuv makes again in a forked
        child): a template's children may inherit them."""
        return set()

    def leave_serving(self):
        """Close what serving left that the template's children must not inherit."""
        for fd in self.PIPE:
            try:
                os.close(fd)
            except OSError:
                pass

    # Out-of-band GC and work (oob.py): None when oob_gc and oob_work_header are off.
    oob = None
    deadlines = None  # this worker's requests and their deadlines (deadline.py)

    def extend_heartbeat(self, until):
        """extend_deadline: let `timeout` kill this worker no sooner than `until`, where
        the heartbeat comes from the requests (the sync worker). gthread's and the
        event-loop workers' comes from their loop, which a stuck request does not stop
        (gthread) or stops for good (asyncio, gevent): nothing to push there."""

    def load_wsgi(self):
        # Where a gunicorn worker imports the app, after its init_signals: what the import
        # installed wins here as it does there.
        if self.app_signals is None:
            self.app_signals = appsignals.record_in_worker(super().load_wsgi,
                                                           may_fork=self.channel is not None)
        else:
            self.app_signals.apply(keep=self.own_signals())
            super().load_wsgi()
        # After the app is loaded: its gc thresholds are the ones oob_gc works from.
        self.oob = OutOfBand.for_worker(self, threaded=isinstance(self, gthread.ThreadWorker))
        self.wrap_app()

    def wrap_app(self):
        """What the worker adds around the app it loaded (here, a WSGI app)."""
        if self.oob is not None:
            self.wsgi = self.oob.wrap(self.wsgi)


class Worker(SmartWorkerMixin, sync.SyncWorker):
    """gunicorn's sync worker; with ``--threads N`` (N > 1) the master uses ThreadWorker.

    Its request path adds as little as it can to gunicorn's: on a hello-world request
    every Python call is measurable (bench/cpucost.py; docs/benchmarks). Hence one
    wrapper, handle(), for what the other classes do in handle_request, and
    gunicorn's own accept() and wait() unless orders are pending (handle_command)."""

    can_disable = True
    serves_one_at_a_time = True  # on its main thread (deadline.py)
    # A sync connection carries one request (gunicorn keeps none alive): handle() does
    # the bookkeeping of SmartWorkerMixin.handle_request around it.
    handle_request = sync.SyncWorker.handle_request
    board = None  # our counters' columns (Counters.columns), None without a slot

    def init_process(self):
        if self.slot is not None:
            self.board = self.counters.columns()
        super().init_process()

    def handle_command(self, sig, frame):
        # gunicorn's loop calls self.accept and self.wait: these instance attributes put
        # ours in front of gunicorn's until the orders are read (and while disabled).
        self.orders_pending = True
        self.accept, self.wait = self.accept_ordered, self.wait_ordered

    def follow_orders(self):
        # gunicorn's methods back first: orders signalled from here on put ours back.
        self.__dict__.pop("accept", None)
        self.__dict__.pop("wait", None)
        if self.orders_pending:
            self.read_orders()
        if self.disabled:
            self.accept, self.wait = self.accept_ordered, self.wait_ordered

    def accept_ordered(self, listener):
        self.follow_orders()
        if self.disabled:
            raise BlockingIOError(errno.EAGAIN, "disabled")  # gunicorn's loop waits then
        sync.SyncWorker.accept(self, listener)

    def wait_ordered(self, timeout):
        # Between requests, woken by a signal or a connection: the master's orders first.
        self.follow_orders()
        if not self.disabled:
            return sync.SyncWorker.wait(self, timeout)
        # Out of rotation: wait for orders only, beating the heartbeat as gunicorn does.
        self.notify()
        ready, _, _ = select.select([self.PIPE[0]], [], [], timeout)
        if ready:
            os.read(self.PIPE[0], 1)
        return []

    def extend_heartbeat(self, until):
        # The master kills when now - mtime > timeout (Arbiter.murder_workers): an mtime
        # in the future, as WorkerTmp.notify writes it. The next notify(), after this
        # request, puts it back to now.
        timeout = self.cfg.timeout
        mtime = until - timeout
        if timeout and mtime > self.tmp.last_update():
            os.utime(self.tmp.fileno(), (mtime, mtime))

    def handle(self, listener, client, addr):
        """One connection, one request: request_began() and request_ended() inlined
        (one clock read at each end, three counters written in place, the request's
        deadline tracked only with soft_timeout on: deadline.py), then out-of-band
        work."""
        began = time.monotonic()
        deadlines = self.deadlines
        if deadlines.every_request:
            deadlines.began(began)
        self.in_flight = 1
        board, slot = self.board, self.slot
        if board is not None:  # one connection at a time: one writer
            # No in_flight: the master reads this request in flight while busy_since_us
            # is past last_request_us (counters.py).
            board["busy_since_us"][slot] = int(began * 1e6)
        try:
            super().handle(listener, client, addr)
        finally:
            if deadlines.every_request:
                deadlines.ended()
            elif deadlines.untracked is not None:  # extend_deadline() began it
                deadlines.untracked = None
            self.in_flight = 0
            if board is not None:
                board["last_request_us"][slot] = int(time.monotonic() * 1e6)
                board["requests"][slot] = self.nr
            if self.nr >= self.retire_after:
                self.ask_for_replacement()
        # Out-of-band work goes here: the response is sent and the connection closed
        # (post_request runs before the close), and the next accept() has not happened.
        if self.oob is not None:
            self.oob.after_request()


class ThreadWorker(SmartWorkerMixin, gthread.ThreadWorker):
    """gunicorn's gthread worker."""

    can_disable = True

    def leave_serving(self):
        if self.tpool is not None:
            self.tpool.shutdown(wait=True)  # no thread may be running at fork
        super().leave_serving()

    def handle_quit(self, sig, frame):
        # gunicorn's gthread calls tpool.shutdown() here, inside the signal handler: if
        # QUIT lands while the main thread is in tpool.submit(), which holds the same
        # non-reentrant lock, the worker deadlocks and ignores every later signal. The
        # pool need not be shut down: the process ends with os._exit (exit_process).
        base.Worker.handle_quit(self, sig, frame)

    # Out-of-band work: stop accepting, let in-flight requests finish, run it, accept
    # again (oob.py). enqueue_req and finish_request both run on the main thread.

    def set_accept_enabled(self, enabled):
        # gunicorn's run loop turns accepting back on at every turn: not while paused
        # (out-of-band work) or disabled.
        super().set_accept_enabled(enabled and not self.disabled
                                   and not (self.oob is not None and self.oob.paused))

    def handle_command(self, sig, frame):
        self.method_queue.defer(self.read_orders)  # SimpleQueue.put is reentrant

    def accepting_changed(self):
        self.set_accept_enabled(not self.disabled)
        close_kept_alive_connections(self)

    def enqueue_req(self, conn):
        if self.oob is None or self.oob.admit(conn):
            super().enqueue_req(conn)

    def finish_request(self, conn, fs):
        super().finish_request(conn, fs)
        if self.oob is not None:
            self.oob.request_finished()


def close_kept_alive_connections(worker):
    """While `worker` is disabled, each response closes its connection (gunicorn's
    keepalive = 0, in this worker's configuration only): a client behind a keep-alive
    proxy is answered once more, with "Connection: close", and then reaches others."""
    if worker.disabled:
        worker.keepalive_setting = worker.cfg.keepalive
        worker.cfg.set("keepalive", 0)
    elif worker.keepalive_setting is not None:
        worker.cfg.set("keepalive", worker.keepalive_setting)


def per_worker_sockets(cfg):
    """reuse_port: each worker listens on sockets of its own (the master holds none)."""
    return bool(cfg.reuse_port) and hasattr(socket, "SO_REUSEPORT")


def worker_class_for(cfg):
    """The class the master builds workers of: the one `-k` named, and gthread for the
    sync worker with ``--threads N`` (N > 1), as gunicorn does."""
    chosen = cfg.worker_class
    if issubclass(chosen, Worker) and cfg.threads > 1:
        return ThreadWorker
    return chosen


class HeartbeatFile(WorkerTmp):
    """gunicorn's WorkerTmp around a heartbeat fd the master created and passed on.

    WorkerTmp.__init__ is skipped on purpose: it would create a new file, and the master
    watches the one it made.
    """

    def __init__(self, fd):  # pylint: disable=super-init-not-called
        self._tmp = os.fdopen(fd, "w+b", 0)



def run_worker_process(arbiter, worker):
    """Run `worker` in this freshly forked process; returns its exit code.

    Mirrors the child branch of gunicorn's Arbiter.spawn_worker(), exit codes included,
    so that a worker that cannot boot still halts the master instead of looping.
    """
    cfg, log = arbiter.cfg, arbiter.log
    worker.pid = os.getpid()
    worker.server = arbiter
    try:
        util._setproctitle("worker [%s] gen=%s" % (arbiter.proc_name, worker.generation))
        log.info("Booting worker with pid: %s (gen=%s from %s)",
                 worker.pid, worker.generation, worker.spawned_from)
        if per_worker_sockets(cfg) and not worker.preloaded:
            # As gunicorn does; a spawner's child got the sockets the master bound for it.
            worker.sockets = sock.create_sockets(cfg, log)
        cfg.post_fork(arbiter, worker)
        worker.init_process()
        return 0
    except SystemExit as exc:
        return exit_code_of(exc)
    except AppImportError as exc:
        log.debug("Exception while loading the application", exc_info=True)
        print("%s" % exc, file=sys.stderr)
        return APP_LOAD_ERROR
    except Exception as exc:
        log.exception("Exception in worker process")
        print("%s" % exc, file=sys.stderr)
        if worker.booted:
            return 255
        return boot_error_code(worker)
    finally:
        log.info("Worker exiting (pid: %s)", worker.pid)
        try:
            worker.tmp.close()
            cfg.worker_exit(arbiter, worker)
        except Exception:
            log.warning("Exception during worker exit", exc_info=True)


def boot_error_code(worker):
    """The exit code of a worker that could not boot: a template's child must not halt
    the server (the master abandons a template whose workers keep failing)."""
    return TEMPLATE_CHILD_BOOT_ERROR if worker.spawned_from == "template" else WORKER_BOOT_ERROR


def become_worker(arbiter, worker):
    """Run `worker` in this freshly forked process, then end the process; never returns."""
    code = 1
    try:
        code = run_worker_process(arbiter, worker)
    except SystemExit as exc:
        # A second stop signal (a terminal's INT and the master's QUIT) interrupted the
        # worker while it was already exiting: its code is the exit code, as in gunicorn.
        code = exit_code_of(exc)
    finally:
        exit_process(code)


def exit_code_of(exc):
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def exit_process(code):
    """End a forked process without unwinding into its parent's stack.

    atexit handlers run as they would when a gunicorn worker leaves through sys.exit().
    """
    try:
        atexit._run_exitfuncs()  # also flushes logging (logging.shutdown is registered)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)
