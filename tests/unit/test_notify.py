"""The master's systemd notifications (notify.py) over a table with no process."""
import re
import types

import pytest

from fakes import Clock, Table
from gunicorn_smartspawn.master.notify import Notifier


@pytest.fixture
def table(monkeypatch):
    return Table(monkeypatch)


def notifier(table, enabled=True):
    sent = []
    return Notifier(None, table.fleet, enabled, send=sent.append, clock=Clock(0.0)), sent


def test_ready_once_the_first_worker_serves_not_before(table):
    notify, sent = notifier(table)
    first = table.spawn(booted=False)
    table.spawn(booted=False)
    notify.turn(1, 2, None)
    assert sent == ["STATUS=Starting: generation 1, workers serving: 0 (target 2)"]
    assert notify.waiting()
    first.worker.beat()
    notify.turn(1, 2, None)
    assert sent[1:] == ["READY=1\nSTATUS=Generation 1, workers serving: 1 (target 2)"]
    assert not notify.waiting()
    notify.turn(1, 2, None)
    assert len(sent) == 2  # nothing changed: nothing sent


def test_a_hup_before_the_first_ready_tells_nothing(table):
    notify, sent = notifier(table)
    notify.reload_started(2)
    notify.reload_failed("it broke", 1, 2)
    assert sent == [] and notify.waiting()


def test_a_hup_is_ready_once_every_worker_of_the_new_generation_serves(table):
    notify, sent = notifier(table)
    table.spawn()
    notify.turn(1, 2, None)
    notify.reload_started(2)
    usec = int(re.search(r"MONOTONIC_USEC=(\d+)", sent[-1]).group(1))
    assert sent[-1].startswith("RELOADING=1\nMONOTONIC_USEC=") and usec > 0
    assert sent[-1].endswith("\nSTATUS=Reloading (HUP)")
    new = table.spawn()
    new.generation = 2
    notify.turn(2, 2, None)
    assert not sent[-1].startswith("READY=1")  # one of two
    assert sent[-1] == "STATUS=Reloading (HUP): generation 2, workers serving: 2 (target 2)"
    other = table.spawn()
    other.generation = 2
    notify.turn(2, 2, None)
    assert sent[-1] == "READY=1\nSTATUS=Generation 2, workers serving: 3 (target 2)"


def test_a_failed_hup_is_ready_again_and_says_why(table):
    notify, sent = notifier(table)
    table.spawn()
    notify.turn(1, 1, None)
    notify.reload_started(2)
    notify.reload_failed("the configuration did not load", 1, 1)
    assert sent[-1] == ("READY=1\nSTATUS=Generation 1, workers serving: 1 (target 1); the "
                        "last reload failed: the configuration did not load (generation 1 "
                        "kept serving)")
    assert not notify.waiting()
    notify.reload_failed("twice", 1, 1)  # no reload in progress: nothing
    assert "twice" not in sent[-1]


def test_a_refork_done_is_in_the_status(table):
    notify, sent = notifier(table)
    table.spawn()
    notify.turn(1, 1, None)
    refork = types.SimpleNamespace(generation=2, reason="URG")
    notify.turn(2, 1, refork)
    assert re.fullmatch(r"STATUS=Generation 2, workers serving: 1 \(target 1\); last refork: "
                        r"to generation 2 \(URG\) at 1970-01-01 \d\d:\d\d:\d\d", sent[-1])


def test_stopping_is_the_last_word(table):
    notify, sent = notifier(table)
    table.spawn()
    notify.turn(1, 1, None)
    notify.stopping()
    notify.stopping()
    notify.turn(1, 1, None)
    assert sent[-1] == "STOPPING=1\nSTATUS=Stopping" and sent.count(sent[-1]) == 1


def test_an_off_notifier_says_nothing(table):
    """Direct spawning: gunicorn's own READY=1, at boot, is all systemd hears."""
    notify, sent = notifier(table, enabled=False)
    table.spawn()
    notify.turn(1, 1, None)
    notify.stopping()
    assert sent == [] and not notify.waiting()


def test_gunicorns_own_reload_is_ready_when_it_returns(table):
    """A server that fell back to direct spawning: gunicorn's reload spawns and stops
    workers of the same generation; READY=1 once it has returned."""
    notify, sent = notifier(table)
    table.spawn()
    notify.turn(1, 1, None)
    notify.reload_started(None)
    table.spawn()
    notify.turn(1, 1, None)  # gunicorn's reload calls manage_workers: not ready yet
    assert not any(message.startswith("READY=1") for message in sent[1:])
    notify.reloaded(1, 1)
    assert sent[-1].startswith("READY=1\nSTATUS=Generation 1, ")
