"""Where a worker is stuck: its stacks on SIG_DUMP, and each request's soft deadline.

On SIG_DUMP (shared/signals.py) faulthandler's C-level handler writes the Python stack
of every thread to the error log, even while the worker is stuck in C code; the master
sends it on `worker dump PID` (control socket), before WORKER TIMEOUT's SIGABRT, and when
a request passes its soft deadline (master/watchdog.py). A Python handler behind it
(`chain`) runs ``on_soft_timeout`` in that last case, told apart by the master-written
counter ``soft_timeouts`` having moved.

With ``soft_timeout`` on, each request in flight has a soft deadline; the worker
publishes the earliest not yet reported in its counters (``soft_deadline_us``), where the
master's watchdog looks each turn. Which request is running is a contextvar: it follows
gthread's threads, asyncio's tasks and gevent's greenlets. The sync worker, with
``soft_timeout`` off, tracks no request: on a hello-world request that costs ~1.5 % of
its CPU (bench/cpucost.py). It serves one request at a time, so its main context holds a
marker (SYNC_WORKER) for good, which the contexts copied from it inherit (asgiref's
async_to_sync, asyncio.to_thread, copy_context().run): extend_deadline() there begins the
Request of the one in flight when it is first called, shared by all of them.
"""
import contextvars
import faulthandler
import signal
import sys
import threading
import time

from gunicorn_smartspawn.shared.signals import SIG_DUMP

# The request this thread, task or greenlet is serving (a Request), or None; or, in the
# sync worker without soft_timeout, SYNC_WORKER: whatever request it serves.
_current = contextvars.ContextVar("smartspawn_request", default=None)
SYNC_WORKER = object()


class Request:
    __slots__ = ("began", "deadline", "until", "reported")

    def __init__(self, began, deadline):
        self.began = began          # time.monotonic()
        self.deadline = deadline    # its soft deadline, or None (soft_timeout off)
        self.until = began          # what extend_deadline granted it, up to
        self.reported = False       # the master reported its soft timeout


class Deadlines:
    """A worker's requests in flight, their deadlines, and its stack dumps."""

    def __init__(self, worker):
        self.worker = worker
        self.cfg, self.log = worker.cfg, worker.log
        self.soft_timeout = worker.cfg.soft_timeout
        # Whether the worker calls began() and ended() for every request; if not (the
        # sync worker, soft_timeout off), extend() begins the request in flight
        # (untracked), and the worker drops it when the request ends.
        self.every_request = bool(self.soft_timeout) or not worker.serves_one_at_a_time
        self.untracked = None
        if not self.every_request:
            _current.set(SYNC_WORKER)  # made in the worker's main thread, before it serves
        self.in_flight = set()  # with soft_timeout on: the Requests in flight
        # gthread's threads begin and end requests at once; the SIG_DUMP handler takes
        # no lock (it may interrupt the main thread holding it, with the sync worker).
        self.lock = threading.Lock()
        self.reports_seen = self.counter("soft_timeouts")
        self.dump_stream = None
        self.warned_clamp = False

    def counter(self, field):
        return self.worker.counters.get(self.worker.slot, field) if self.worker.counters else 0

    # -- stack dumps --------------------------------------------------------------------

    def take_dump_signal(self):
        """SIG_DUMP writes every thread's stack to the error log (after the worker's own
        signal handlers are set; again after USR1 reopened the log files: faulthandler
        keeps the fd it was given)."""
        stream = error_stream(self.log)
        # Again after USR1: register() only updates the file of a signal it holds, and
        # signal.signal() would take the signal from its C handler.
        faulthandler.unregister(SIG_DUMP)
        signal.signal(SIG_DUMP, self.dumped)  # first: faulthandler chains to it
        try:
            faulthandler.register(SIG_DUMP, file=stream, all_threads=True, chain=True)
        except (OSError, ValueError, RuntimeError, AttributeError) as exc:
            self.log.warning("Stack dumps (SIG_DUMP) are off in this worker: %s", exc)
            return
        self.dump_stream = stream  # faulthandler keeps a reference too

    def dumped(self, _signum, _frame):
        """After the stacks were written: was it a soft timeout the master reported?"""
        reports = self.counter("soft_timeouts")
        if reports == self.reports_seen:
            return  # asked by an operator, or before WORKER TIMEOUT's kill
        self.reports_seen = reports
        self.mark_reported()
        try:
            self.cfg.on_soft_timeout(self.worker)
        except Exception:
            self.log.exception("Exception in on_soft_timeout hook")

    def mark_reported(self):
        """The earliest overdue request is the one the master reported."""
        now = time.monotonic()
        overdue = [r for r in list(self.in_flight)
                   if not r.reported and r.deadline is not None and r.deadline <= now]
        if overdue:
            min(overdue, key=lambda r: r.deadline).reported = True
        self.publish()

    # -- requests -----------------------------------------------------------------------

    def began(self, now=None):
        """A request began (at `now`, time.monotonic(), when the caller has read it)."""
        if now is None:
            now = time.monotonic()
        request = Request(now, now + self.soft_timeout if self.soft_timeout else None)
        _current.set(request)
        if request.deadline is not None:
            with self.lock:
                self.in_flight.add(request)
                self.publish()

    def ended(self):
        request = _current.get()
        _current.set(None)  # a thread or greenlet serves the next request in this context
        if request is not None and request.deadline is not None:
            with self.lock:
                self.in_flight.discard(request)
                self.publish()

    def untracked_request(self):
        """The request the sync worker serves (soft_timeout off), begun when first asked
        for; None between requests."""
        with self.lock:
            if not self.worker.in_flight:
                return None
            if self.untracked is None:
                self.untracked = Request(time.monotonic(), None)
            return self.untracked

    def publish(self):
        """The earliest deadline not reported yet, and when its request began."""
        if self.worker.slot is None:
            return
        pending = [r for r in list(self.in_flight) if not r.reported]
        first = min(pending, key=lambda r: r.deadline) if pending else None
        counters, slot = self.worker.counters, self.worker.slot
        counters.set(slot, "soft_began_us", int(first.began * 1e6) if first else 0)
        counters.set(slot, "soft_deadline_us", int(first.deadline * 1e6) if first else 0)

    def extend(self, seconds):
        """smartspawn.extend_deadline(seconds) in this worker."""
        request = _current.get()
        if request is SYNC_WORKER:
            request = self.untracked_request()
        if request is None:
            return None
        limit = self.cfg.max_deadline_extension
        if seconds > limit:
            if not self.warned_clamp:
                self.warned_clamp = True
                self.log.warning("extend_deadline(%g) is cut to %g s "
                                 "(max_deadline_extension)", seconds, limit)
            seconds = limit
        now = time.monotonic()
        request.until = max(request.until, now + max(seconds, 0))
        if request.deadline is not None and request.until > request.deadline:
            with self.lock:
                request.deadline = request.until
                request.reported = False  # a new promise: reported again if it passes
                self.publish()
        self.worker.extend_heartbeat(request.until)
        return request.until - now


def error_stream(log):
    """The file gunicorn's error log writes to, or stderr (syslog, a custom logger)."""
    for handler in getattr(getattr(log, "error_log", None), "handlers", ()):
        stream = getattr(handler, "stream", None)
        try:
            stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        return stream
    return sys.stderr


# The process's Deadlines, once a worker serves; None in any other process.
_deadlines = None


def install(deadlines):
    global _deadlines
    _deadlines = deadlines


def extend_deadline(seconds):
    """Push this request's soft deadline, and where the sync worker allows it its hard
    limit (``timeout``), to `seconds` from now (never earlier than they were).

    Returns the seconds from now the request has before either is reached, or None
    outside a request smartspawn serves (plain gunicorn, a test calling the app, a
    thread of the app's own), where it does nothing. At most ``max_deadline_extension``
    seconds a call; more is cut to that, with one warning. See docs/operators.md.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError("extend_deadline(seconds): seconds must be a number, not %r"
                        % (seconds,))
    return None if _deadlines is None else _deadlines.extend(seconds)
