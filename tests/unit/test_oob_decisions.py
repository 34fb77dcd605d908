"""oob.py's decisions without a server: OutOfBand (when to work or collect, the header,
the thread worker's pause) and RequestGate (event-loop workers), over a fake worker, a
fake `gc` module (the real collector's thresholds are left alone) and a fake loop.
"""
import logging
import os
import socket
import time
import types

import pytest

from gunicorn_smartspawn.worker import oob
from gunicorn_smartspawn.shared.counters import Counters
from gunicorn_smartspawn.worker.oob import HOLD_LIMIT, SAFETY_NET, OutOfBand, RequestGate

HEADER = "X-Smartspawn-OOB-Work"
LOG = logging.getLogger("smartspawn-unit-oob")


class FakeGC:
    """The part of the gc module oob.py uses, with counts the test sets."""

    def __init__(self, thresholds=(700, 10, 10)):
        self.thresholds = thresholds
        self.count = [0, 0, 0]
        self.enabled = True
        self.collected = []
        self.full_collections = 0

    def get_threshold(self):
        return self.thresholds

    def set_threshold(self, *thresholds):
        self.thresholds = thresholds

    def get_count(self):
        return tuple(self.count)

    def isenabled(self):
        return self.enabled

    def collect(self, generation=2):
        self.collected.append(generation)
        self.count = [0, 0, 0]
        self.full_collections += generation == 2
        return 0

    def get_stats(self):
        return [{"collections": 0}, {"collections": 0},
                {"collections": self.full_collections}]


@pytest.fixture
def fake_gc(monkeypatch):
    fake = FakeGC()
    monkeypatch.setattr(oob, "gc", fake)
    monkeypatch.setattr(oob, "_app_thresholds", None)
    return fake


class Worker:
    """What OutOfBand reads and calls on gunicorn's worker."""

    def __init__(self, workers=2, threaded=False, coordinated=False, **settings):
        cfg = dict(oob_gc=False, oob_gc_generation=None, oob_work_header=HEADER,
                   workers=workers, http_protocols=["h1"], on_oob_work=self.hook)
        cfg.update(settings)
        self.cfg = types.SimpleNamespace(**cfg)
        self.log = LOG
        self.alive = True
        self.nr = 0
        self.sockets = []
        self.notified = 0
        self.works = []
        self.counters = Counters(slots=1)
        self.slot = self.counters.allocate()
        self.accepting = []
        self.enqueued = []
        self.method_queue = types.SimpleNamespace(deferred=[])
        self.method_queue.defer = lambda *call: self.method_queue.deferred.append(call)
        self.ppid = os.getpid()  # woken with SIGCHLD, which a process ignores by default
        self.oob = OutOfBand.for_worker(self, threaded=threaded)
        if self.oob is not None and not coordinated:
            # As when the master has no slot for it: it decides alone (the tests of the
            # master's coordination are further down).
            self.oob.coordinated = False
            self.oob.solo = workers == 1

    def hook(self, worker):
        assert worker is self
        self.works.append(self.notified)

    def notify(self):
        self.notified += 1

    def set_accept_enabled(self, enabled):
        self.accepting.append(enabled)

    def enqueue_req(self, conn):
        self.enqueued.append(conn)

    def serve(self, requests=1):
        self.nr += requests


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
    return value


# -- OutOfBand: what is on ----------------------------------------------------------------

def test_nothing_to_do_when_neither_gc_nor_header_is_on(fake_gc):
    assert Worker(oob_gc=False, oob_work_header=None).oob is None
    assert fake_gc.thresholds == (700, 10, 10)


def test_the_header_alone_leaves_the_collector_alone(fake_gc):
    worker = Worker(oob_gc=False)
    assert worker.oob.header == HEADER.lower() and not worker.oob.gc_on
    assert fake_gc.thresholds == (700, 10, 10) and oob._app_thresholds is None
    assert worker.oob.due() == (False, False)


def test_http2_turns_it_off_in_a_thread_worker_only(fake_gc, caplog):
    with caplog.at_level(logging.WARNING, LOG.name):
        assert Worker(oob_gc=True, threaded=True, http_protocols=["h2", "h1"]).oob is None
    assert "HTTP/2 connections never leave a thread worker" in caplog.text
    assert Worker(oob_gc=True, threaded=False, http_protocols=["h2"]).oob is not None
    assert Worker(oob_gc=True, threaded=True, http_protocols=["h1"]).oob is not None


@pytest.mark.parametrize("app, serving", [
    ((700, 10, 10), (SAFETY_NET, 10, 10)),
    ((50_000, 20, 30), (100_000, 20, 30)),   # never below twice the application's own
    ((0, 10, 10), (0, 10, 10)),              # the application turned it off: stays off
])
def test_while_serving_the_threshold_is_raised_to_the_safety_net(fake_gc, app, serving):
    fake_gc.thresholds = app
    Worker(oob_gc=True)
    assert oob._app_thresholds == app and fake_gc.thresholds == serving


def test_the_applications_thresholds_are_read_once_not_from_raised_ones(fake_gc):
    Worker(oob_gc=True)
    Worker(oob_gc=5)  # e.g. a process forked from a worker: raised thresholds inherited
    assert oob._app_thresholds == (700, 10, 10)


# -- OutOfBand: the work header -------------------------------------------------------------

def start_response_log():
    sent = []
    return sent, lambda status, headers, exc_info=None: sent.append((status, headers))


def test_without_a_header_the_app_is_not_wrapped(fake_gc):
    def app(environ, start_response):
        return []
    assert Worker(oob_gc=True, oob_work_header=None).oob.wrap(app) is app


@pytest.mark.parametrize("value, asks", [
    ("true", True), ("1", True), ("yes", True), (" YES ", True), ("True", True),
    ("no", False), ("", False), ("2", False), ("truee", False), ("y", False),
])
def test_the_header_is_stripped_and_asks_for_work_only_with_true_1_or_yes(fake_gc, caplog,
                                                                          value, asks):
    worker = Worker()
    headers = [("Content-Type", "text/plain"), ("x-SMARTSPAWN-oob-WORK", value),
               ("X-Other", "1")]
    sent, start_response = start_response_log()

    def app(environ, start):
        start("200 OK", headers)
        return [b"ok"]
    with caplog.at_level(logging.DEBUG, LOG.name):
        assert worker.oob.wrap(app)({}, start_response) == [b"ok"]
    assert sent == [("200 OK", [("Content-Type", "text/plain"), ("X-Other", "1")])]
    assert worker.oob.requested is asks
    assert ("Ignored x-SMARTSPAWN-oob-WORK" in caplog.text) is not asks


def test_every_copy_of_the_header_is_stripped_and_other_headers_pass_unchanged(fake_gc):
    worker = Worker()
    sent, start_response = start_response_log()
    plain = [("Content-Length", "2"), ("X-Smartspawn-OOB-Work-Not", "true")]
    worker.oob.wrap(lambda e, start: start("404 Not Found", plain))({}, start_response)
    assert sent == [("404 Not Found", plain)] and not worker.oob.requested
    kept = worker.oob.take_header([(HEADER, "no"), ("A", "b"), (HEADER.upper(), "true")])
    assert kept == [("A", "b")] and worker.oob.requested


def test_asgi_headers_are_bytes(fake_gc):
    worker = Worker()
    kept = worker.oob.take_header([(b"content-type", b"text/plain"),
                                   (HEADER.lower().encode(), b"Yes")])
    assert kept == [(b"content-type", b"text/plain")] and worker.oob.requested


# -- OutOfBand: when to collect ----------------------------------------------------------------

def test_every_n_requests(fake_gc):
    fake_gc.enabled = False  # gc.disable() by the application: collect anyway, fully
    worker = Worker(oob_gc=3)
    assert worker.oob.every == 3
    decisions = []
    for _ in range(7):
        worker.serve()
        decisions.append(worker.oob.due())
        worker.oob.after_request()
    assert [collect for _, collect in decisions] == [False, False, True, False, False, True,
                                                     False]
    assert worker.oob.collections == 2 and worker.oob.collected_at == 6
    assert fake_gc.collected == [2, 2]


def test_adaptive_collects_once_the_count_passes_the_applications_threshold(fake_gc):
    worker = Worker(oob_gc=True)
    assert worker.oob.every == 0
    fake_gc.count = [700, 0, 0]
    assert worker.oob.due() == (False, False)  # CPython collects past the threshold
    fake_gc.count = [701, 0, 0]
    assert worker.oob.due() == (False, True)
    fake_gc.enabled = False  # gc.disable() by the application
    assert worker.oob.due() == (False, False)


def test_adaptive_with_the_applications_threshold_at_zero_never_collects(fake_gc):
    fake_gc.thresholds = (0, 10, 10)
    worker = Worker(oob_gc=True)
    fake_gc.count = [10 ** 6, 0, 0]
    assert worker.oob.due() == (False, False)


def test_an_exiting_worker_collects_nothing(fake_gc):
    worker = Worker(oob_gc=1)
    worker.serve(5)
    worker.alive = False
    assert worker.oob.gc_due() is False
    worker.oob.after_request()
    assert fake_gc.collected == []


def test_the_configured_generation_is_collected_and_published(fake_gc):
    worker = Worker(oob_gc=1, oob_gc_generation=0)
    worker.serve()
    worker.oob.after_request()
    assert fake_gc.collected == [0]
    assert worker.counters.get(worker.slot, "oob_collections") == 1
    assert worker.notified == 2  # the heartbeat before and after: like a request


def test_adaptive_collection_when_due_runs_what_cpython_would(fake_gc, monkeypatch):
    """While gen2's count is under its threshold CPython's choice is young, and the
    worker makes it; past it, the allocator decides (collect_as_cpython_would)."""
    ran = []
    monkeypatch.setattr(oob, "collect_as_cpython_would", lambda: ran.append(1) or 1)
    monkeypatch.setattr(oob, "INCREMENTAL_GC", False)
    worker = Worker(oob_gc=True)
    fake_gc.count = [5000, 0, 10]
    worker.oob.after_request()
    assert fake_gc.collected == [0] and not ran
    fake_gc.count = [5000, 11, 10]
    worker.oob.after_request()
    assert fake_gc.collected == [0, 1] and not ran
    fake_gc.count = [5000, 0, 11]
    worker.oob.after_request()
    assert ran == [1] and fake_gc.collected == [0, 1] and worker.oob.collections == 3


# -- OutOfBand: the work, and the only worker -----------------------------------------------------

def test_requested_work_runs_once_between_two_heartbeats(fake_gc):
    worker = Worker()
    worker.oob.take_header([(HEADER, "1")])
    worker.oob.after_request()
    assert worker.works == [1] and worker.notified == 2
    assert not worker.oob.requested and worker.oob.works == 1
    worker.oob.after_request()
    assert worker.works == [1] and worker.notified == 2  # nothing asked: nothing runs


def test_a_failing_hook_is_logged_not_raised(fake_gc, caplog):
    def hook(worker):
        raise RuntimeError("boom")
    worker = Worker(on_oob_work=hook)
    worker.oob.take_header([(HEADER, "true")])
    with caplog.at_level(logging.ERROR, LOG.name):
        worker.oob.after_request()
    assert "Exception in on_oob_work hook" in caplog.text and "boom" in caplog.text
    assert worker.notified == 2 and not worker.oob.requested


def test_no_collection_after_work_that_collected_already(fake_gc):
    worker = Worker(oob_gc=True, on_oob_work=lambda w: fake_gc.collect())
    worker.oob.take_header([(HEADER, "true")])
    fake_gc.count = [5000, 0, 0]
    assert worker.oob.due() == (True, True)
    worker.oob.after_request()
    assert fake_gc.collected == [2] and worker.oob.collections == 0


@pytest.fixture
def waiting_client():
    """A listening socket with a client in its queue (select: readable)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    yield listener
    client.close()
    listener.close()


def test_the_only_worker_serves_a_waiting_client_first(fake_gc, waiting_client):
    worker = Worker(workers=1, oob_gc=True)
    worker.sockets = [waiting_client]
    worker.oob.take_header([(HEADER, "true")])
    fake_gc.count = [701, 0, 0]
    assert worker.oob.due() == (False, False)
    # The collection runs inside the next request, at the application's own threshold.
    assert fake_gc.thresholds == (700, 10, 10) and worker.oob.lowered
    worker.sockets = []  # nobody waits any more
    assert worker.oob.due() == (True, True)
    assert fake_gc.thresholds == (SAFETY_NET, 10, 10) and not worker.oob.lowered


def test_with_other_workers_a_waiting_client_does_not_postpone(fake_gc, waiting_client):
    worker = Worker(workers=2, oob_gc=1)
    worker.sockets = [waiting_client]
    worker.serve()
    assert worker.oob.due() == (False, True)


def test_closed_listeners_mean_no_client_waits(fake_gc):
    worker = Worker(workers=1)
    closed = socket.socket()
    closed.close()
    worker.sockets = [closed]
    worker.oob.take_header([(HEADER, "true")])
    assert worker.oob.due() == (True, False)


# -- OutOfBand: a thread worker stops accepting, lets requests finish, runs, resumes --------

def test_a_thread_worker_with_one_request_runs_the_work_when_it_ends(fake_gc):
    worker = Worker(threaded=True)
    assert worker.oob.admit("c1")
    worker.oob.take_header([(HEADER, "true")])
    worker.oob.request_finished()
    assert worker.works == [1] and worker.accepting == [] and not worker.oob.paused


def test_a_thread_worker_holds_new_requests_until_the_last_one_ends(fake_gc):
    worker = Worker(threaded=True)
    assert worker.oob.admit("c1") and worker.oob.admit("c2")
    worker.oob.take_header([(HEADER, "true")])
    worker.oob.request_finished()              # c1 ends: work due, c2 still running
    assert worker.oob.paused and worker.accepting == [False] and worker.works == []
    assert not worker.oob.admit("c3") and not worker.oob.admit("c4")  # held
    assert worker.oob.gate.in_flight == 1
    worker.oob.request_finished()              # c2 ends: the work runs, held ones go on
    assert worker.works == [1] and not worker.oob.paused
    assert worker.enqueued == ["c3", "c4"]
    assert worker.oob.admit("c5") and worker.oob.gate.in_flight == 1
    assert worker.method_queue.deferred == []  # the hold's timer was cancelled


def test_a_thread_worker_holds_requests_for_the_hold_limit_at_most(fake_gc, monkeypatch):
    monkeypatch.setattr(oob, "HOLD_LIMIT", 0.01)
    worker = Worker(threaded=True)
    assert worker.oob.admit("stream") and worker.oob.admit("c1")
    worker.oob.take_header([(HEADER, "true")])
    worker.oob.request_finished()              # c1 ends: work due, the stream goes on
    assert not worker.oob.admit("c2") and worker.accepting == [False]
    # The timer hands the release to the main thread (gunicorn's method queue).
    deferred = wait_for(lambda: worker.method_queue.deferred)  # the hold's timer
    release, held = deferred[0]
    release(held)
    assert worker.enqueued == ["c2"] and not worker.oob.paused and worker.works == []
    assert worker.oob.admit("c2")              # enqueued: admitted, held no more
    worker.oob.request_finished()              # c2 ends: the work waits for the stream
    assert not worker.oob.paused and worker.works == []
    worker.oob.request_finished()              # the stream ends: now it runs
    assert worker.works == [1] and not worker.oob.paused
    assert not held.timer.is_alive()           # no timer outlives its hold


def test_a_thread_worker_with_nothing_due_never_pauses(fake_gc):
    worker = Worker(threaded=True)
    for conn in range(5):
        assert worker.oob.admit(conn)
    for _ in range(5):
        worker.oob.request_finished()
    assert worker.accepting == [] and worker.works == [] and worker.oob.gate.in_flight == 0


# -- RequestGate (asyncio, gevent) ------------------------------------------------------------

class Event:
    def __init__(self):
        self.done = False

    def set(self):
        self.done = True


class Loop:
    """call_later that keeps the callbacks for the test to run."""

    def __init__(self):
        self.later = []

    def call_later(self, delay, function):
        self.later.append((delay, function))

    def run(self, delay):
        """Run (once) the callbacks scheduled with `delay`."""
        due = [f for d, f in self.later if d == delay]
        self.later = [(d, f) for d, f in self.later if d != delay]
        for function in due:
            function()
        return len(due)


def gate_for(worker):
    loop = Loop()
    return RequestGate(worker.oob, Event, loop.call_later), loop


def test_nothing_due_nothing_held_nothing_scheduled(fake_gc):
    worker = Worker()
    gate, loop = gate_for(worker)
    gate.entered()
    gate.entered()
    gate.left()
    gate.left()
    assert gate.held() is None and loop.later == [] and not gate.pending


def test_due_work_holds_new_requests_and_runs_once_none_is_in_flight(fake_gc):
    worker = Worker()
    gate, loop = gate_for(worker)
    gate.entered()
    gate.entered()
    worker.oob.take_header([(HEADER, "yes")])
    gate.left()
    event = gate.held()
    assert gate.pending and event is not None and not event.done
    assert [d for d, _ in loop.later] == [HOLD_LIMIT]  # no run while one is in flight
    gate.left()
    assert loop.run(0) == 1
    assert worker.works == [1] and event.done and gate.held() is None
    assert not gate.pending and not gate.running
    assert loop.run(HOLD_LIMIT) == 1 and gate.held() is None  # the old timer: harmless


def test_held_requests_go_on_after_the_hold_limit_and_the_work_waits(fake_gc):
    worker = Worker()
    gate, loop = gate_for(worker)
    gate.entered()
    gate.entered()
    worker.oob.take_header([(HEADER, "1")])
    gate.left()
    first = gate.held()
    loop.run(HOLD_LIMIT)  # the one in flight streams on: held requests may go on
    assert first.done and gate.held() is None and gate.pending and worker.works == []
    gate.entered()        # one of them started
    gate.left()
    gate.left()           # now none is in flight
    assert loop.run(0) >= 1 and worker.works == [1]
    assert not gate.pending


def test_the_timer_of_an_earlier_hold_does_not_release_a_later_one(fake_gc):
    worker = Worker()
    gate, loop = gate_for(worker)
    gate.entered()
    gate.hold()
    first = gate.resumed
    gate.release(first)
    gate.hold()
    second = gate.resumed
    gate.release(first)   # the first hold's timer, late
    assert gate.held() is second and not second.done
    gate.release(second)
    assert second.done and gate.held() is None


def test_a_request_that_started_before_the_run_puts_it_off(fake_gc):
    worker = Worker()
    gate, loop = gate_for(worker)
    gate.entered()
    worker.oob.take_header([(HEADER, "true")])
    gate.left()
    gate.entered()  # a request got in between the schedule and the callback
    assert loop.run(0) == 1 and worker.works == [] and gate.pending
    gate.left()
    assert loop.run(0) == 1 and worker.works == [1]


def test_the_only_worker_holds_no_request_while_others_run(fake_gc):
    worker = Worker(workers=1)
    gate, loop = gate_for(worker)
    gate.entered()
    gate.entered()
    worker.oob.take_header([(HEADER, "true")])
    gate.left()
    assert gate.pending and gate.held() is None and loop.later == []
    seen = []
    worker.cfg.on_oob_work = lambda w: seen.append(gate.held())
    gate.left()
    loop.run(0)
    assert len(seen) == 1 and seen[0] is not None  # held while the work itself runs
    assert seen[0].done and gate.held() is None


def test_the_gate_opens_whatever_the_work_raises(fake_gc, monkeypatch):
    worker = Worker()
    gate, loop = gate_for(worker)
    gate.entered()
    worker.oob.take_header([(HEADER, "true")])

    def broken(work, collect):
        raise RuntimeError("broken")
    monkeypatch.setattr(worker.oob, "run", broken)
    gate.left()
    with pytest.raises(RuntimeError):
        loop.run(0)
    assert not gate.running and gate.held() is None and not gate.pending


def test_no_release_while_the_work_runs(fake_gc):
    worker = Worker()
    gate, loop = gate_for(worker)
    gate.entered()
    worker.oob.take_header([(HEADER, "true")])
    released = []

    def hook(w):
        gate.release(gate.resumed)  # the hold's timer fires while the work runs (gevent)
        released.append(gate.held() is not None)
    worker.cfg.on_oob_work = hook
    gate.left()
    loop.run(0)
    assert released == [True] and gate.held() is None


def test_an_exiting_worker_runs_no_work(fake_gc):
    worker = Worker()
    gate, loop = gate_for(worker)
    gate.entered()
    worker.oob.take_header([(HEADER, "true")])
    gate.left()
    worker.alive = False
    loop.run(0)
    assert worker.works == [] and gate.held() is None and not gate.running


# -- coordinated by the master (master/outofband.py grants) --------------------------------

def test_a_coordinated_worker_asks_once_and_works_when_granted(fake_gc):
    worker = Worker(oob_gc=2, coordinated=True)
    counters, slot = worker.counters, worker.slot
    worker.serve(2)
    assert worker.oob.due() == (False, False)  # it asks
    assert counters.get(slot, "oob_asked") == 1 and worker.oob.due() == (False, False)
    worker.serve(1)
    worker.oob.after_request()
    assert counters.get(slot, "oob_asked") == 1 and worker.oob.collections == 0  # waits
    counters.set(slot, "oob_granted", 1)
    worker.oob.master_spoke()  # SIG_COMMAND, between requests
    assert worker.oob.collections == 1
    assert counters.get(slot, "oob_done") == 1 and counters.get(slot, "oob_since_us") == 0


def test_a_young_adaptive_collection_runs_at_once_without_a_turn(fake_gc):
    worker = Worker(oob_gc=True, coordinated=True)
    fake_gc.count = [SAFETY_NET, 5, 3]  # gen2's count under its threshold: not a full one
    assert worker.oob.due() == (False, True)
    assert worker.counters.get(worker.slot, "oob_asked") == 0


def test_a_collection_that_may_be_full_waits_its_turn_collecting_young_meanwhile(
        fake_gc, monkeypatch):
    monkeypatch.setattr(oob, "INCREMENTAL_GC", False)  # as on every CPython but 3.14.0-3.14.4
    worker = Worker(oob_gc=True, coordinated=True)
    counters, slot = worker.counters, worker.slot
    fake_gc.count = [SAFETY_NET, 0, 11]  # gen2's count past its threshold (10)
    assert worker.oob.due() == (False, oob.YOUNG)
    assert counters.get(slot, "oob_asked") == 1
    worker.oob.run(*worker.oob.due())
    assert fake_gc.collected == [0] and counters.get(slot, "oob_done") == 0  # still asks
    fake_gc.count = [0, 0, 11]
    counters.set(slot, "oob_granted", 1)
    assert worker.oob.due() == (False, oob.TURN)


def test_an_ask_whose_full_collection_is_no_longer_due_is_given_back(fake_gc, monkeypatch):
    monkeypatch.setattr(oob, "INCREMENTAL_GC", False)  # as on every CPython but 3.14.0-3.14.4
    worker = Worker(oob_gc=True, coordinated=True)
    counters, slot = worker.counters, worker.slot
    fake_gc.count = [SAFETY_NET, 0, 11]
    worker.oob.due()
    fake_gc.count = [0, 0, 0]  # collected fully meanwhile (the safety net, the app)
    assert worker.oob.due() == (False, False)
    assert counters.get(slot, "oob_done") == 1 and worker.oob.collections == 0


def test_after_cpython_declined_a_full_collection_no_ask_until_gen2s_count_grew_again(
        fake_gc, monkeypatch):
    """CPython's full collection waits for a ratio that only gen1 collections move: after
    a turn in which it declined, the worker asks again once gen2's count has grown by its
    threshold (10), not at every gen1 collection (a turn every ten requests or so)."""
    worker = Worker(oob_gc=True, coordinated=True)
    counters, slot = worker.counters, worker.slot
    declined = []

    def cpython_declines():  # a gen1 collection: gen2's count grows by one
        declined.append(fake_gc.get_count())
        fake_gc.count = [0, 0, fake_gc.count[2] + 1]
        return 1

    monkeypatch.setattr(oob, "collect_as_cpython_would", cpython_declines)
    monkeypatch.setattr(oob, "INCREMENTAL_GC", False)
    fake_gc.count = [SAFETY_NET, 0, 11]
    worker.oob.due()
    counters.set(slot, "oob_granted", 1)
    worker.oob.after_request()  # its turn: CPython declines, and gen2's count is 12
    assert declined and counters.get(slot, "oob_done") == 1
    for count in range(12, 22):  # gen1 collections run meanwhile: young only, no ask
        fake_gc.count = [SAFETY_NET, 0, count]
        assert worker.oob.due() == (False, oob.YOUNG)
    assert counters.get(slot, "oob_asked") == 1
    fake_gc.count = [SAFETY_NET, 0, 22]  # grown by its threshold: it may be full now
    assert worker.oob.due() == (False, oob.YOUNG) and counters.get(slot, "oob_asked") == 2


def test_a_full_collection_since_cpython_declined_one_lets_the_next_ask_go(
        fake_gc, monkeypatch):
    """A full collection elsewhere (the application's gc.collect(), the safety net) starts
    CPython's ratio over: past gen2's threshold again, the worker asks at once, even at a
    count where it had been declined."""
    worker = Worker(oob_gc=True, coordinated=True)
    counters, slot = worker.counters, worker.slot
    monkeypatch.setattr(oob, "collect_as_cpython_would", lambda: 0)  # declines, gen0
    monkeypatch.setattr(oob, "INCREMENTAL_GC", False)
    fake_gc.count = [SAFETY_NET, 0, 11]
    worker.oob.due()
    counters.set(slot, "oob_granted", 1)
    worker.oob.after_request()  # declined at 11
    assert worker.oob.full_declined_at == (11, 0)
    fake_gc.collect()  # a full collection
    fake_gc.count = [SAFETY_NET, 0, 11]  # past the threshold again, unseen in between
    assert worker.oob.due() == (False, oob.YOUNG) and counters.get(slot, "oob_asked") == 2
