"""outofband.py's Coordinator over a fake table and clock: at most oob_concurrency grants at
once, the oldest ask first, a worker spawned first for a worker that would be alone, the
extra worker's leave after EXTRA_LINGER, and disable / enable."""
import logging

from fakes import Clock, Table, apply, config, situation
from gunicorn_smartspawn.master.actions import Replace
from gunicorn_smartspawn.master.outofband import (
    EXTRA_LINGER, GRANT_START_LIMIT, Coordinator, Grant, Revoke,
)

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


def carry_out(table, decisions):
    """Carry out each decision as it is yielded, as the arbiter does; returns them."""
    done = []
    for action in decisions:
        if isinstance(action, Grant):
            table.fleet.counters.set(action.record.slot, "oob_granted", action.ask)
        elif isinstance(action, Revoke):
            table.fleet.counters.set(action.record.slot, "oob_granted", 0)
        else:
            apply(table.fleet, [action])
        done.append(action)
    return done


def grant(table, decisions):
    """The records granted."""
    return [a.record for a in carry_out(table, decisions) if isinstance(a, Grant)]


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
    assert policy.waiting_for_another  # the master looks again soon, unwoken
    extra = table.spawn(booted=False)
    assert grant(table, policy.decide(situation(workers=1))) == []  # not serving yet
    assert policy.waiting_for_another
    extra.worker.beat()
    assert grant(table, policy.decide(situation(workers=1))) == [alone]
    assert not policy.waiting_for_another
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


def test_never_every_worker_at_once_whatever_the_setting(monkeypatch):
    table, (a, b), _, policy = coordinator(monkeypatch, 2, oob_concurrency=2)
    ask(table, a)
    ask(table, b)
    assert grant(table, policy.decide(situation(workers=2))) == [a]
    assert policy.not_counted() == 0  # b waits for a: no extra worker
    finish(table, a)
    assert grant(table, policy.decide(situation(workers=2))) == [b]


def test_a_grant_not_begun_in_time_goes_to_the_next(monkeypatch):
    table, (a, b, c), clock, policy = coordinator(monkeypatch, 3)
    ask(table, a)
    assert grant(table, policy.decide(situation(workers=3))) == [a]
    ask(table, b)
    clock.advance(GRANT_START_LIMIT + 0.1)  # a is in a long request
    decided = carry_out(table, policy.decide(situation(workers=3)))
    assert [type(d).__name__ for d in decided] == ["Revoke", "Grant"]
    assert decided[0].record is a and decided[1].record is b
    # Begun: a grant is not taken back, however long the work.
    table.fleet.counters.set(b.slot, "oob_granted", decided[1].ask)
    table.fleet.counters.set(b.slot, "oob_since_us", 1)
    clock.advance(GRANT_START_LIMIT + 0.1)
    assert apply(table.fleet, policy.decide(situation(workers=3))) == []


def test_one_extra_worker_at_most_and_it_takes_a_gone_workers_place(monkeypatch):
    table, (alone,), clock, policy = coordinator(monkeypatch, 1, oob_concurrency=8)
    ask(table, alone)
    assert grant(table, policy.decide(situation(workers=1))) == []
    extra = table.spawn()
    assert grant(table, policy.decide(situation(workers=1))) == [alone]
    ask(table, extra)  # the extra asks in turn: alone works, so it waits; no second extra
    assert grant(table, policy.decide(situation(workers=1))) == []
    assert policy.not_counted() == 1
    finish(table, extra)
    table.reap(alone)  # killed while it worked
    table.fleet.release_departed()
    assert apply(table.fleet, policy.decide(situation(workers=1))) == []
    assert policy.not_counted() == 0 and not extra.outgoing  # it serves in alone's place


def test_the_extra_leaves_at_once_when_workers_grows(monkeypatch):
    table, (alone,), _, policy = coordinator(monkeypatch, 1)
    ask(table, alone)
    assert grant(table, policy.decide(situation(workers=1))) == []
    extra = table.spawn()
    assert grant(table, policy.decide(situation(workers=1))) == [alone]
    table.spawn()  # TTIN
    (leave,) = apply(table.fleet, policy.decide(situation(workers=2)))
    assert leave.record is extra and policy.not_counted() == 0


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


def test_a_worker_still_booting_is_waited_for_not_spawned_for(monkeypatch):
    """The first ask can come before the second worker's first heartbeat (a server that
    just started, CI on 3.14.4): that worker will serve in a moment."""
    table, (a,), _, policy = coordinator(monkeypatch, 1)
    b = table.spawn(booted=False)
    ask(table, a)
    assert grant(table, policy.decide(situation(workers=2))) == []
    assert policy.not_counted() == 0 and policy.waiting_for_another
    b.worker.beat()
    assert grant(table, policy.decide(situation(workers=2))) == [a]


def test_an_extra_worker_not_serving_yet_stays_counted_until_it_serves(monkeypatch):
    """Released before it served, the extra worker was no longer counted over `workers`,
    and the master stopped the oldest worker, the one that had asked, in its place."""
    table, (a, b), _, policy = coordinator(monkeypatch, 2)
    apply(table.fleet, [Replace(b, "max_requests")])  # b is outgoing: a is alone
    ask(table, a)
    assert grant(table, policy.decide(situation())) == []
    assert policy.not_counted() == 1
    finish(table, a)  # the ask is given back before the extra has checked in
    assert apply(table.fleet, policy.decide(situation())) == []
    assert policy.not_counted() == 1  # still counted: nothing is stopped in its place
    extra = table.spawn()
    (leave,) = apply(table.fleet, policy.decide(situation()))
    assert isinstance(leave, Replace) and leave.record is extra and not a.outgoing
    assert policy.not_counted() == 0
