"""Out-of-band GC and out-of-band work: run them between requests, not inside one.

CPython's cyclic collector runs whenever an allocation takes the youngest generation's
count past its threshold: in the middle of some unlucky request. With ``oob_gc`` on, a
worker raises that threshold while it serves (to SAFETY_NET allocations: the safety net)
and, after each response has been sent and its connection closed, compares
``gc.get_count()`` with the application's own thresholds to run the collection that is
due (``oob_gc = True``), or collects every N requests (``oob_gc = N``). An application
can also ask for work after a response with a header (``oob_work_header``); the
``on_oob_work(worker)`` hook runs it.

A sync worker does this after ``handle()`` returns, before its next ``accept()``: while
it works, the kernel hands new connections to the other workers. A worker that serves
requests concurrently holds new requests at a `RequestGate` until none is running, for
HOLD_LIMIT at most (past it they go on, and the work waits for the next idle moment),
then runs the work, accepting nothing meanwhile: an event-loop worker (asyncio, gevent)
on its loop, a thread worker (`ThreadGate`) on its main thread, which also stops
accepting while it holds the requests that arrive on kept-alive connections.

The master coordinates (master/outofband.py): what is costly (header work, `oob_gc = N`,
a collection that may be full) waits for its grant, at most `oob_concurrency` workers at
once; young collections run at once (`as_granted`).
"""
import gc
import os
import select
import signal
import sys
import threading
import time

# While serving, automatic collection waits for this many allocations (of objects the
# collector tracks): normal requests never reach it, but one that allocates without bound
# still gets collected inside the request instead of growing memory without limit. An
# absolute number, 100 times CPython 3.11's default threshold (700), so that a huge request
# is bounded alike on 3.13+, whose default is 2000; never below twice the application's own.
SAFETY_NET = 70_000

# CPython 3.14.0 to 3.14.4 ship an incremental collector: a young and an old generation;
# every automatic collection is one increment (the young generation and a slice of the
# old one), what gc.collect(1) runs, and the young garbage it finds is not freed at once
# but moved to the old generation for later increments. Measured: half the safety net
# keeps a huge request to the same memory there.
# 3.14.5 went back to 3.13's generational collector.
INCREMENTAL_GC = (3, 14) <= sys.version_info[:3] < (3, 14, 5)
if INCREMENTAL_GC:
    SAFETY_NET //= 2

# A worker that serves concurrently holds new requests for at most this long (seconds)
# while the ones in flight finish before out-of-band work (RequestGate): longer than most
# requests take,
# short enough that a streaming response or a long poll in flight delays the others by
# no more than this.
HOLD_LIMIT = 0.5

# What due() says to collect: what the counters call for (DUE, re-checked after the work,
# which may have collected); the young generations only (YOUNG: a coordinated worker
# waiting for its turn); what the master granted a turn for (TURN: possibly a full one).
DUE, YOUNG, TURN = True, "young", "turn"

# Header values that ask for work; others are ignored (logged at debug level).
WORK_VALUES = ("true", "1", "yes")

# The thresholds the application runs with, read before oob raised them. Module state,
# not the worker's: a process forked from a worker inherits the raised thresholds and
# must not take them for the application's.
_app_thresholds = None


def text(value):
    return value.decode("latin-1") if isinstance(value, bytes) else value


class _Allocation:
    """An object the collector tracks; allocating one runs CPython's threshold check."""


def serving_thresholds():
    t0, t1, t2 = _app_thresholds
    if t0 == 0:
        return 0, t1, t2  # the application turned automatic collection off: keep it off
    return max(SAFETY_NET, 2 * t0), t1, t2


def automatic_gc_on():
    # gc.disable() or gc.set_threshold(0) by the application: nothing automatic to move.
    return gc.isenabled() and _app_thresholds[0] > 0


def collect_as_cpython_would():
    """Run the one collection CPython's allocator would run now; return its generation.

    CPython collects the oldest generation whose count exceeds its threshold, but skips a
    full collection until the objects promoted since the last one reach a quarter of the
    long-lived ones, a ratio Python code cannot read. Rather than guess it, lower the gen0
    threshold and allocate: the allocator applies its own rules, once.

    The incremental collector (3.14.0 to 3.14.4) has no such rule: its allocator always
    runs one increment, and does not count every increment in gc.get_stats().
    """
    if INCREMENTAL_GC:
        gc.collect(1)
        return 1
    _, t1, t2 = _app_thresholds
    before = [s["collections"] for s in gc.get_stats()]
    gc.set_threshold(max(gc.get_count()[0], 1), t1, t2)
    try:
        keep = []
        # Checked at the top of the loop: from 3.12 the collection runs at the next
        # eval-breaker check (a backward jump), not inside the allocation.
        for _ in range(4):
            if [s["collections"] for s in gc.get_stats()] != before:
                break
            keep.append(_Allocation())
    finally:
        gc.set_threshold(*serving_thresholds())
    after = [s["collections"] for s in gc.get_stats()]
    return next((gen for gen in (2, 1, 0) if after[gen] > before[gen]), None)


class OutOfBand:
    """A worker's out-of-band schedule and figures (``worker.oob``, for status and logs)."""

    @classmethod
    def for_worker(cls, worker, threaded=False):
        """The worker's OutOfBand, or None when neither oob_gc nor the header is on."""
        cfg = worker.cfg
        if not cfg.oob_gc and not cfg.oob_work_header:
            return None
        if threaded and "h2" in getattr(cfg, "http_protocols", ()):  # gunicorn 25+
            # An HTTP/2 connection stays "in flight" as long as the client keeps it open:
            # the worker would stop accepting for that long.
            worker.log.warning("oob_gc and out-of-band work are off: HTTP/2 connections "
                               "never leave a thread worker without a request in flight")
            return None
        return cls(worker, threaded)

    def __init__(self, worker, threaded=False):
        global _app_thresholds
        cfg = worker.cfg
        self.worker = worker
        self.log = worker.log
        self.cfg = cfg
        self.every = 0 if cfg.oob_gc is True else int(cfg.oob_gc)  # 0: adaptive (or off)
        self.gc_on = bool(cfg.oob_gc)
        self.generation = cfg.oob_gc_generation
        self.header = (cfg.oob_work_header or "").lower()
        # Coordinated by the master (it has a slot for us in its counters): we ask, it
        # grants at most oob_concurrency workers at once, and spawns another worker
        # first when we are the only one serving (master/outofband.py).
        self.coordinated = worker.slot is not None
        self.asks = 0                # our asks so far (counters: oob_asked)
        self.done = 0                # the last ask finished or given back (oob_done)
        # (gen2's count, full collections so far) after CPython last declined a full
        # collection in our turn (see full_declined); None: never, or a full one since.
        self.full_declined_at = None
        # Without the master's table (every slot taken): the only worker never starts
        # work while a client waits.
        self.solo = cfg.workers == 1 and not self.coordinated
        self.requested = False       # the application asked for work (header)
        self.collected_at = 0        # worker.nr at the last out-of-band collection
        self.lowered = False         # the application's thresholds are back for a request
        # Figures for the status tool and the debug log.
        self.collections = 0
        self.collect_seconds = 0.0
        self.works = 0
        self.work_seconds = 0.0
        # Thread workers only (see ThreadWorker in worker/base.py).
        self.gate = ThreadGate(self) if threaded else None  # a RequestGate sets its own
        if self.gc_on:
            if _app_thresholds is None:
                _app_thresholds = gc.get_threshold()
            gc.set_threshold(*serving_thresholds())

    # -- requests -----------------------------------------------------------------------

    def wrap(self, app):
        """The WSGI app, minus the work header: noted, and removed from every response."""
        if not self.header:
            return app
        header, size = self.header, len(self.header)

        def oob_app(environ, start_response):
            def start(status, headers, exc_info=None):
                for name, _ in headers:
                    if len(name) == size and name.lower() == header:
                        headers = self.take_header(headers)
                        break
                return start_response(status, headers, exc_info)
            return app(environ, start)
        return oob_app

    def take_header(self, headers):
        """`headers` without the work header (any case); notes whether it asks for work.
        Names and values are str (WSGI) or bytes (ASGI)."""
        kept = []
        for name, value in headers:
            if text(name).lower() != self.header:
                kept.append((name, value))
            elif text(value).strip().lower() in WORK_VALUES:
                self.requested = True
            else:
                self.log.debug("Ignored %s: %r (true, 1 or yes ask for work)", text(name),
                               text(value))
        return kept

    def gc_due(self):
        if not self.gc_on or not self.worker.alive:
            return False  # off, or exiting: its memory goes with it
        if self.every:
            return self.worker.nr - self.collected_at >= self.every
        return automatic_gc_on() and gc.get_count()[0] > _app_thresholds[0]

    def due(self):
        """(work, collect): what to run now; (False, False) when nothing is to run."""
        if self.lowered:
            gc.set_threshold(*serving_thresholds())
            self.lowered = False
        work, collect = self.requested, self.gc_due()
        if self.coordinated:
            return self.as_granted(work, collect)
        if (work or collect) and self.solo and self.client_waiting():
            # The only worker: serve the waiting client first. A collection due then runs
            # inside its request, as it would without oob_gc; the work waits.
            self.log.debug("Out-of-band work postponed: a client is waiting and this "
                           "is the only worker")
            if collect and automatic_gc_on():
                gc.set_threshold(*_app_thresholds)
                self.lowered = True
            return False, False
        return work, collect

    # -- coordination (counters: we write oob_asked, oob_done, oob_since_us; the master
    # oob_granted) -----------------------------------------------------------------------

    def as_granted(self, work, collect):
        """What due() returns when the master coordinates.

        The master serializes what is costly: the work a header asked for, a collection
        every N requests, and an adaptive collection that may be a full one (gen2's
        count past its threshold). Until the grant comes, the worker serves; a young
        collection due meanwhile runs at once (YOUNG: gen0 or gen1, a millisecond or
        so), so that the wait never lets garbage pile up to the safety net and a full
        collection run inside a request. A cheap adaptive collection needs no turn. An
        ask whose reason is gone when its turn comes (the work of a header already ran,
        a full collection no longer due) is given back.
        """
        costly = self.costly_collection(collect)
        if not (work or costly):
            if self.waiting():
                self.finished()
            # Declined in our last turn: young only, so that no full collection can run
            # without a turn while gen2's count is short of asking again.
            return False, YOUNG if collect and self.full_declined() else collect
        if self.granted():
            return work, (costly or collect) and TURN
        if not self.waiting():
            self.asks += 1
            self.set("oob_asked", self.asks)
            self.wake_master()
        # oob_gc = N and oob_gc_generation say what to collect, and when: nothing else.
        return False, collect and not self.every and self.generation is None and YOUNG

    def costly_collection(self, due):
        """Whether a collection must wait for the master's grant: every collection of
        `oob_gc = N` or of `oob_gc_generation = 2` that is `due`, and an adaptive one
        (due or not yet) that may be full."""
        if not self.gc_on or not self.worker.alive:
            return False
        if self.every or self.generation == 2:
            return due
        if self.generation is not None or INCREMENTAL_GC or not automatic_gc_on():
            return False  # a young collection, or an increment: bounded work
        return gc.get_count()[2] > _app_thresholds[2] and not self.full_declined()

    def full_declined(self):
        """CPython declined a full collection in our last turn, and gen2's count has
        grown by less than its threshold since.

        Only gen1 collections move the ratio CPython waits for (collect_as_cpython_would),
        each adding one to gen2's count. Asking again after each of them cost a wake-up
        of the master and a signal to the worker every ten requests or so, for as long
        as CPython kept declining: 674 asks in 6 300 requests of one worker in
        bench/oob_latency.py, which put the master at 20 us of CPU per request. Asking
        again once the count has grown by its threshold, as it had before the first
        ask, lets a full collection come at most that many gen1 collections later than
        CPython's allocator would have run it: with cycles that live until a full
        collection frees them, up to about twice the garbage CPython's own ratio lets
        wait (1.7 times the most uncollected with a 30 000-object heap, 1.08 times with
        200 000, in a simulation of one worker)."""
        if self.full_declined_at is None:
            return False
        declined_at, full_collections = self.full_declined_at
        if gc.get_stats()[2]["collections"] != full_collections:
            self.full_declined_at = None  # a full collection ran since: the ratio starts over
            return False
        return declined_at <= gc.get_count()[2] < declined_at + max(1, _app_thresholds[2])

    def waiting(self):
        """We asked, and have not finished that ask."""
        return self.asks > self.done

    def granted(self):
        return self.waiting() and self.worker.counters.get(
            self.worker.slot, "oob_granted") == self.asks

    def finished(self):
        self.done = self.asks
        self.set("oob_done", self.asks)
        self.wake_master()  # the next worker's turn, and a worker spawned for us leaves

    def set(self, field, value):
        self.worker.counters.set(self.worker.slot, field, value)

    def wake_master(self):
        try:
            os.kill(self.worker.ppid, signal.SIGCHLD)  # a no-op reap that wakes its loop
        except OSError:
            pass

    def master_spoke(self):
        """SIG_COMMAND, on the worker's loop: a grant may have come."""
        if not (self.coordinated and self.granted()):
            return
        if self.gate is not None:
            self.gate.check()
        else:
            self.after_request()  # the sync worker, between requests

    def client_waiting(self):
        try:
            readable, _, _ = select.select(self.worker.sockets, [], [], 0)
        except (OSError, ValueError):
            return False  # the listeners are closed: the worker is stopping
        return bool(readable)

    def after_request(self):
        """Sync worker: the response is sent and the connection closed."""
        work, collect = self.due()
        if work or collect:
            self.run(work, collect)

    # -- thread workers: stop accepting, let requests finish, run, accept again --------
    # (ThreadWorker in worker/base.py calls these on its main thread.)

    @property
    def paused(self):
        """Requests are held: the worker accepts no connection."""
        return self.gate.held() is not None

    def admit(self, conn):
        """Whether `conn`'s request may start now; if not, it is held until the work has
        run, or for HOLD_LIMIT at most."""
        held = self.gate.held()
        if held is not None:
            held.conns.append(conn)
            return False
        self.gate.entered()
        return True

    def request_finished(self):
        self.gate.left()

    # -- the work -----------------------------------------------------------------------

    def run(self, work, collect):
        """Run what due() returned: `work` (on_oob_work), `collect` (DUE, YOUNG or TURN)."""
        turn = self.coordinated and self.granted()
        if turn:
            self.set("oob_since_us", int(time.monotonic() * 1e6))
            if not self.granted():  # taken back as we began (GRANT_START_LIMIT)
                self.set("oob_since_us", 0)
                return
        try:
            self.run_granted(work, collect)
        finally:
            if turn:
                self.set("oob_since_us", 0)
                self.finished()

    def run_granted(self, work, collect):
        # Notified before and after: the work gets `timeout` seconds, like a request.
        self.worker.notify()
        if work:
            self.requested = False
            started = time.perf_counter()
            try:
                self.cfg.on_oob_work(self.worker)
            except Exception:
                self.log.exception("Exception in on_oob_work hook")
            seconds = time.perf_counter() - started
            self.works += 1
            self.work_seconds += seconds
            self.log.debug("Out-of-band work (on_oob_work) in %.2f ms (%d runs, %.1f ms "
                           "in all)", seconds * 1e3, self.works, self.work_seconds * 1e3,
                           extra={"metric": "smartspawn.oob_work.duration",
                                  "value": seconds * 1e3, "mtype": "timer"})
        if collect is DUE and not self.gc_due():
            collect = False  # the work collected already
        elif collect == TURN and work and not self.costly_collection(self.gc_due()):
            collect = False
        if collect:
            self.collect(young=collect == YOUNG)
        self.worker.notify()

    def publish(self):
        """Our figures in the master's counters table (smartspawn status, gunicornc)."""
        worker = self.worker
        if worker.slot is not None:
            worker.counters.set(worker.slot, "oob_collections", self.collections)
            worker.counters.set(worker.slot, "oob_microseconds",
                                       int(self.collect_seconds * 1e6))

    def collect(self, young=False):
        started = time.perf_counter()
        if young or (self.generation is None and not INCREMENTAL_GC and automatic_gc_on()
                     and gc.get_count()[2] <= _app_thresholds[2]):
            # No full collection possible: CPython's allocator would collect gen1 past its
            # threshold, else gen0. Cheaper than asking it (collect_as_cpython_would).
            generation = 1 if gc.get_count()[1] > _app_thresholds[1] else 0
            gc.collect(generation)
        elif self.generation is not None:
            generation = self.generation
            gc.collect(generation)
        elif automatic_gc_on():  # past gen2's threshold, or an increment (3.14.0-3.14.4)
            generation = collect_as_cpython_would()
            if generation != 2 and not INCREMENTAL_GC:
                # Read after its gen1 collection, if any, which moved gen2's count.
                self.full_declined_at = (gc.get_count()[2], gc.get_stats()[2]["collections"])
        else:
            generation = 2  # oob_gc = N with the collector off: collect anyway, fully
            gc.collect()
        seconds = time.perf_counter() - started
        self.collected_at = self.worker.nr
        self.collections += 1
        self.collect_seconds += seconds
        self.publish()
        self.log.debug("Out-of-band gc: generation %s in %.2f ms (%d collections, %.1f ms "
                       "in all)", generation, seconds * 1e3, self.collections,
                       self.collect_seconds * 1e3,
                       extra={"metric": "smartspawn.oob_gc.duration",
                              "value": seconds * 1e3, "mtype": "timer"})


class RequestGate:
    """Out-of-band work for a worker that runs its requests concurrently on one loop
    (asyncio's, gevent's hub).

    A request passes the gate (`entered`) and leaves it (`left`). When work is due, it
    runs once no request is in flight, from a loop callback (after the server has written
    the response that just ended). To get there, new requests wait at the gate (`held`
    returns the event to wait for) while the ones in flight finish, but for HOLD_LIMIT
    seconds at most: past that (a streaming response, a long poll) they go on, and the
    work waits for the next moment no request is in flight. The only worker never holds
    a request: a request held is a client waiting.
    """

    def __init__(self, oob, new_event, call_later, accepting=None):
        self.oob = oob
        # accepting(bool), where the worker can stop accepting (gevent): off while
        # requests are held, so that the kernel hands new connections to other workers.
        self.accepting = accepting
        oob.gate = self  # the master's grant arrives through it (OutOfBand.master_spoke)
        self.new_event = new_event    # asyncio.Event or gevent.event.Event
        self.call_later = call_later  # call_later(seconds, function) on the loop
        self.in_flight = 0
        self.pending = False          # work is due: it runs when no request is in flight
        self.running = False          # the work runs (under gevent, it may yield)
        self.resumed = None           # while requests are held: set when they may go on

    def held(self):
        """The event a new request must wait for first, or None."""
        return self.resumed

    def entered(self):
        self.in_flight += 1

    def left(self):
        self.in_flight -= 1
        self.check()

    def check(self):
        """After a request, or when the master granted our ask: run the work once no
        request is in flight, holding new ones meanwhile."""
        if not self.pending:
            if self.running or not any(self.oob.due()):
                return
            self.pending = True
            if not self.oob.solo:  # held until the work has run: none starts before it
                self.hold()
        if self.in_flight == 0:
            self.call_later(0, self.run_work)

    def hold(self):
        resumed = self.resumed = self.new_event()
        self.call_later(HOLD_LIMIT, lambda: self.release(resumed))
        if self.accepting is not None:
            self.accepting(False)

    def release(self, resumed):
        """Let the requests held on `resumed` go on (not while the work runs; a timer of
        an earlier hold does nothing)."""
        if self.running or resumed is None or resumed is not self.resumed:
            return
        self.resumed = None
        resumed.set()
        if self.accepting is not None:
            self.accepting(True)

    def hold_while_working(self):
        if self.resumed is None:
            self.hold()  # nothing starts while it runs, even in the only worker

    def run_work(self):
        if not self.pending or self.in_flight or self.running:
            return  # run already, or a request started since: it comes back here
        self.pending = False
        self.hold_while_working()
        self.running = True
        oob = self.oob
        try:
            if oob.worker.alive:
                oob.run(*oob.due())
        finally:
            self.running = False
            self.release(self.resumed)


class HeldConnections:
    """ThreadGate's event: the connections whose request arrived while held, handed to
    the thread pool when it is set; the timer that sets it at HOLD_LIMIT."""

    def __init__(self, worker, release):
        self.worker = worker
        self.conns = []
        # The timer only queues the release for the main thread, which owns the gate.
        self.timer = threading.Timer(HOLD_LIMIT, worker.method_queue.defer, (release, self))
        self.timer.daemon = True

    def set(self):
        # Ended before the timer (the work ran): no thread may outlive the hold, or a
        # template would fork with it running.
        self.timer.cancel()
        self.timer.join()
        conns, self.conns = self.conns, []
        for conn in conns:
            self.worker.enqueue_req(conn)  # admitted now, counted in flight


class ThreadGate(RequestGate):
    """RequestGate for the gthread worker. Its main thread starts every request
    (enqueue_req) and learns of each end (finish_request): a request that may not start
    yet is not awaited but its connection is held (HeldConnections), and the worker stops
    accepting meanwhile, so that the kernel hands new connections to the other workers."""

    def __init__(self, oob):
        super().__init__(oob, new_event=None, call_later=self.now)

    @staticmethod
    def now(_seconds, function):
        """call_later(0, run_work) from left(), which runs on the main thread after the
        response: the work can run at once. (The one timed call, hold()'s, is our own.)"""
        function()

    def hold_while_working(self):
        """Nothing to do: the work runs on the main thread, which starts every request."""

    def hold(self):
        if not self.in_flight:
            return  # left() runs the work at once, on this thread: nothing can start
        worker = self.oob.worker
        held = self.resumed = HeldConnections(worker, self.release)
        held.timer.start()
        worker.set_accept_enabled(False)
