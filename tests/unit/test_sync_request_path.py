"""The sync worker's request path (worker/base.py's Worker), in-process: gunicorn's own
accept() and wait() unless the master's orders are pending, and one request's
bookkeeping done once, around the connection."""
import errno
import contextvars
import sys
import threading
import types

import pytest
from gunicorn.workers import sync

from gunicorn_smartspawn.shared.counters import Counters
from gunicorn_smartspawn.shared.signals import SIG_COMMAND
from gunicorn_smartspawn.worker import deadline
from gunicorn_smartspawn.worker.base import Worker


class Log:
    def __init__(self):
        self.lines = []

    def info(self, msg, *args):
        self.lines.append(msg % args)

    debug = warning = info


def worker(soft_timeout=0):
    w = Worker.__new__(Worker)
    w.counters = Counters(slots=4)
    w.slot = w.counters.allocate()
    w.board = w.counters.columns()
    w.log = Log()
    w.cfg = types.SimpleNamespace(soft_timeout=soft_timeout, max_deadline_extension=300, timeout=30)
    # In a context of its own, as the worker's main thread: with soft_timeout off the
    # sync worker's Deadlines marks it for good (deadline.SYNC_WORKER).
    w.context = contextvars.copy_context()
    w.deadlines = w.context.run(deadline.Deadlines, w)
    w.retire_after = sys.maxsize
    w.nr = 0
    return w


class Listener:
    def accept(self):
        raise BlockingIOError(errno.EAGAIN, "nothing waiting")


def test_gunicorns_accept_and_wait_run_unless_orders_are_pending():
    """Measured: an override of accept() and wait() costs about 2 % of a hello-world
    request's CPU; ours stand in front of gunicorn's only until the orders are read."""
    w = worker()
    assert w.accept.__func__ is sync.SyncWorker.accept
    assert w.wait.__func__ is sync.SyncWorker.wait
    w.counters.set(w.slot, "disabled", 1)
    w.handle_command(SIG_COMMAND, None)
    assert w.accept == w.accept_ordered and w.wait == w.wait_ordered
    with pytest.raises(BlockingIOError, match="disabled"):
        w.accept(Listener())
    assert w.disabled and w.accept == w.accept_ordered  # ours while out of rotation
    w.counters.set(w.slot, "disabled", 0)
    w.handle_command(SIG_COMMAND, None)
    with pytest.raises(BlockingIOError, match="nothing waiting"):  # gunicorn's accept ran
        w.accept(Listener())
    assert not w.disabled and w.accept.__func__ is sync.SyncWorker.accept
    assert w.log.lines[-1].startswith("Worker enabled by the operator")


def test_orders_signalled_while_they_are_read_are_read_next(monkeypatch):
    w = worker()
    w.handle_command(SIG_COMMAND, None)

    def read_orders():
        w.orders_pending = False
        w.handle_command(SIG_COMMAND, None)  # the signal lands as they are read

    monkeypatch.setattr(w, "read_orders", read_orders)
    w.follow_orders()
    assert w.orders_pending and w.accept == w.accept_ordered


def test_a_request_is_counted_once_around_its_connection(monkeypatch):
    w = worker()
    seen = {}

    def gunicorn_handle(self, listener, client, addr):
        seen.update(busy=self.counters.get(self.slot, "busy_since_us"),
                    last=self.counters.get(self.slot, "last_request_us"),
                    tracked=self.deadlines.untracked)
        self.nr += 1

    monkeypatch.setattr(sync.SyncWorker, "handle", gunicorn_handle)
    w.context.run(w.handle, None, None, None)
    # In flight for the master: busy_since_us past last_request_us (counters.py).
    assert seen["busy"] > seen["last"] and seen["tracked"] is None  # soft_timeout off
    assert w.in_flight == 0 and w.context.run(deadline._current.get) is deadline.SYNC_WORKER
    assert w.counters.get(w.slot, "requests") == 1 and not w.counters.get(w.slot, "in_flight")
    assert w.counters.get(w.slot, "last_request_us") > w.counters.get(
        w.slot, "busy_since_us") == seen["busy"]  # finished


def test_with_soft_timeout_every_request_has_its_deadline(monkeypatch):
    w = worker(soft_timeout=5)
    seen = []
    monkeypatch.setattr(sync.SyncWorker, "handle", lambda self, *_: seen.append(
        (deadline._current.get(), self.counters.get(self.slot, "soft_deadline_us"))))
    w.handle(None, None, None)
    ((request, published),) = seen
    assert request.deadline - request.began == 5 and published == int(request.deadline * 1e6)
    assert deadline._current.get() is None and not w.counters.get(w.slot, "soft_deadline_us")


def test_extend_deadline_begins_an_untracked_request_and_the_next_starts_afresh(
        monkeypatch):
    """Contexts copied from the worker's (asgiref's async_to_sync, asyncio.to_thread)
    extend the one request in flight; a thread the app starts without one gets None."""
    w = worker()
    granted, copied, plain = [], [], []

    def in_thread(target):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()

    def gunicorn_handle(self, listener, client, addr):
        granted.append(self.deadlines.extend(10 if not granted else 1))
        context = contextvars.copy_context()
        in_thread(lambda: copied.append(context.run(self.deadlines.extend, 5)))
        in_thread(lambda: plain.append(self.deadlines.extend(10)))

    monkeypatch.setattr(sync.SyncWorker, "handle", gunicorn_handle)
    monkeypatch.setattr(w, "extend_heartbeat", lambda until: None)
    context = w.context
    assert context.run(w.deadlines.extend, 10) is None  # between requests
    context.run(w.handle, None, None, None)
    context.run(w.handle, None, None, None)
    # The second request's 1 s is its own, not what was left of the first's 10 s.
    assert 9.9 < granted[0] <= 10 and 0.9 < granted[1] <= 1, granted
    # The copied context extended the same request: 5 s, or what was granted already.
    assert 9.8 < copied[0] <= 10 and 4.9 < copied[1] <= 5, copied
    assert plain == [None, None]
    assert w.deadlines.untracked is None
