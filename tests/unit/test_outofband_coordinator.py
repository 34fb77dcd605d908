"""outofband.py's Coordinator over a fake table and clock: at most oob_concurrency grants at
once, the oldest ask first, a worker spawned first for a worker that would be alone, the
extra worker's leave after EXTRA_LINGER, and disable / enable."""
import logging

from fakes import Clock, Table, apply, config, situation
from gunicorn_smartspawn.master.actions import Replace
from gunicorn_smartspawn.master.outofband import EXTRA_LINGER, Coordinator, Grant

LOG = logging.getLogger("smartspawn-unit-outofband")


def coordinator(monkeypatch, workers, oob_concurrency=None):
    table = Table(monkeypatch)
    records = [table.spawn() for _ in range(workers)]
    clock = Clock()
    return table, records, clock, Coordinator(config(oob_concurrency=oob_concurrency), LOG,
                                              table.fleet, clock)


def ask(table, record):
    counters = table.fleet.counters
    counters.set(record.slot, "oob_asked", counters.get(record.slot, "oob_asked") + 1)


def grant(table, decisions):
    """Carry out the grants as the arbiter does; returns the granted records."""
    granted = []
    for action in apply(table.fleet, decisions):
        if isinstance(action, Grant):
            table.fleet.counters.set(action.record.slot, "oob_granted", action.ask)
            granted.append(action.record)
    return granted


def finish(table, record):
    counters = table.fleet.counters
    counters.set(record.slot, "oob_done", counters.get(record.slot, "oob_asked"))


def test_at_most_oob_concurrency_at_once_the_oldest_ask_first(monkeypatch):
    table, (a, b, c, d), clock, policy = coordinator(monkeypatch, 4, oob_concurrency=2)
    ask(table, c)
    assert grant(table, policy.decide(situation(workers=4))) == [c]
    ask(table, b)
    assert grant(table, policy.decide(situation(workers=4))) == [b]
    # Seen in this order by the master's turns: d, then a.
    ask(table, d)
    assert grant(table, policy.decide(situation(workers=4))) == []  # c and b work
    clock.advance(1)
    ask(table, a)
    assert grant(table, policy.decide(situation(workers=4))) == []
    finish(table, c)
    assert grant(table, policy.decide(situation(workers=4))) == [d]
    finish(table, b)
    finish(table, d)
    assert grant(table, policy.decide(situation(workers=4))) == [a]
    assert policy.stats(4)["oob_most_at_once"] == 2 and policy.stats(4)["oob_grants"] == 4


def test_the_default_is_a_quarter_of_the_workers_at_least_one(monkeypatch):
    table, records, _, policy = coordinator(monkeypatch, 8)
    for record in records:
        ask(table, record)
    assert len(grant(table, policy.decide(situation(workers=8)))) == 2
    assert policy.stats(3)["oob_concurrency"] == 1


def test_an_ask_given_up_before_its_grant_is_not_granted(monkeypatch):
    table, (a, b), _, policy = coordinator(monkeypatch, 2)
    ask(table, a)
    finish(table, a)  # the collection was no longer due
    assert grant(table, policy.decide(situation())) == []


def test_the_only_worker_gets_an_extra_first_which_leaves_after_the_linger(monkeypatch):
    table, (alone,), clock, policy = coordinator(monkeypatch, 1)
    ask(table, alone)
    assert grant(table, policy.decide(situation(workers=1))) == []
    assert policy.not_counted() == 1  # the master spawns one over `workers`
    extra = table.spawn(booted=False)
    assert grant(table, policy.decide(situation(workers=1))) == []  # not serving yet
    extra.worker.beat()
    assert grant(table, policy.decide(situation(workers=1))) == [alone]
    finish(table, alone)
    assert apply(table.fleet, policy.decide(situation(workers=1))) == []
    clock.advance(EXTRA_LINGER / 2)
    ask(table, alone)  # asks again within the linger: the extra still serves
    assert grant(table, policy.decide(situation(workers=1))) == [alone]
    finish(table, alone)
    clock.advance(EXTRA_LINGER + 1)
    (leave,) = apply(table.fleet, policy.decide(situation(workers=1)))
    assert isinstance(leave, Replace) and leave.record is extra and extra.outgoing
    assert policy.not_counted() == 0


def test_a_worker_whose_others_all_work_waits_for_an_extra(monkeypatch):
    table, (a, b), _, policy = coordinator(monkeypatch, 2, oob_concurrency=2)
    ask(table, a)
    ask(table, b)
    # a is granted (b serves); b would then be alone: one more worker first.
    assert grant(table, policy.decide(situation(workers=2))) == [a]
    assert policy.not_counted() == 1


def test_disable_counts_the_worker_out_and_enable_lets_the_youngest_other_leave(monkeypatch):
    table, (a, b), _, policy = coordinator(monkeypatch, 2)
    policy.disable(a)
    assert policy.not_counted() == 1
    stand_in = table.spawn()
    (leave,) = apply(table.fleet, policy.enable(a))
    assert leave.record is stand_in and policy.not_counted() == 0
    # A disabled worker neither serves for others nor is spawned for: b is alone.
    policy.disable(a)
    ask(table, b)
    assert grant(table, policy.decide(situation())) == []
    assert policy.not_counted() == 2  # a, and the extra b needs
