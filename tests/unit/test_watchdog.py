"""The master's soft-timeout watch (master/watchdog.py): which workers' requests are
reported, and that each deadline is reported once."""
import types

from fakes import Clock

from gunicorn_smartspawn.master.watchdog import Watchdog
from gunicorn_smartspawn.shared.counters import Counters


def make(pids=(101, 102)):
    clock, counters = Clock(), Counters(slots=8)
    records = [types.SimpleNamespace(pid=pid, slot=counters.allocate()) for pid in pids]
    return Watchdog(counters, clock), clock, counters, records


def publish(counters, record, began, deadline):
    """What a worker writes (worker/deadline.py): seconds, on the fake clock."""
    counters.set(record.slot, "soft_began_us", int(began * 1e6))
    counters.set(record.slot, "soft_deadline_us", int(deadline * 1e6))


def test_nothing_is_reported_before_the_deadline_or_without_one():
    watchdog, clock, counters, records = make()
    publish(counters, records[0], clock.now, clock.now + 10)
    assert watchdog.overdue(records) == []
    clock.advance(9.9)
    assert watchdog.overdue(records) == []


def test_a_passed_deadline_is_reported_once_with_how_long_its_request_ran():
    watchdog, clock, counters, records = make()
    publish(counters, records[1], clock.now, clock.now + 10)
    clock.advance(12.3)
    (found,) = watchdog.overdue(records)
    assert found.record is records[1] and abs(found.ran - 12.3) < 1e-3
    clock.advance(5)
    assert watchdog.overdue(records) == []  # the worker has not published anew yet


def test_the_next_deadline_a_worker_publishes_is_reported_too():
    watchdog, clock, counters, records = make()
    publish(counters, records[0], clock.now, clock.now + 10)
    clock.advance(11)
    assert len(watchdog.overdue(records)) == 1
    # The worker marked that request reported; its next one (or an extension) is due.
    publish(counters, records[0], clock.now - 10.5, clock.now - 0.5)
    (found,) = watchdog.overdue(records)
    assert abs(found.ran - 10.5) < 1e-3


def test_a_worker_that_left_is_forgotten():
    watchdog, clock, counters, records = make()
    publish(counters, records[0], clock.now, clock.now + 1)
    clock.advance(2)
    assert len(watchdog.overdue(records)) == 1
    assert watchdog.overdue(records[1:]) == [] and watchdog.reported == {}
