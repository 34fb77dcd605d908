"""The master's table of children (fleet.py): each transition, with no process."""
import signal

import pytest

from fakes import Table, Worker
from gunicorn_smartspawn.master.fleet import Role, State

ADDRESS = (("127.0.0.1", 8000),)


@pytest.fixture
def table(monkeypatch):
    return Table(monkeypatch)


def test_a_spawn_goes_queued_sent_serving_and_into_workers(table):
    fleet = table.fleet
    worker = Worker(1)
    record = fleet.queue(worker, table.preloader, fleet.counters.allocate(), None)
    assert record.state is State.QUEUED and fleet.to_send() == [record]
    fleet.sent(record)
    assert record.state is State.SENT and fleet.to_send() == []
    assert fleet.checked_in(1, 4242) is record
    assert record.state is State.SERVING and record.pid == worker.pid == 4242
    assert table.gunicorn_workers == {4242: worker}
    assert fleet.get(4242) is record and not fleet.pending


def test_one_request_in_flight_per_spawner(table):
    fleet = table.fleet
    first, second = (fleet.queue(Worker(age), table.preloader, None, None) for age in (1, 2))
    assert fleet.to_send() == [first]
    fleet.sent(first)
    assert fleet.to_send() == []
    fleet.checked_in(1, 4242)
    assert fleet.to_send() == [second]


def test_an_overdue_spawn_is_found_and_forgetting_it_frees_its_slot(table):
    fleet = table.fleet
    slot = fleet.counters.allocate()
    record = fleet.queue(Worker(1), table.preloader, slot, None)
    fleet.sent(record)
    assert fleet.overdue(record.spawn_deadline + 0.1) == [record]
    assert fleet.overdue(record.spawn_deadline - 0.1) == []
    fleet.forget_pending(1)
    assert record.worker.tmp.closed and record.slot is None and not fleet.pending
    assert fleet.counters.allocate() == slot  # free again


def test_a_standby_is_one_record_until_it_becomes_the_worker(table):
    fleet = table.fleet
    fleet.standby_ready(table.preloader, 777)
    assert fleet.get(777).role is Role.STANDBY and table.preloader.standby_pid == 777
    fleet.sent(fleet.queue(Worker(1), table.preloader, None, None))
    record = fleet.checked_in(1, 777)
    assert fleet.get(777) is record and record.role is Role.WORKER
    assert table.preloader.standby_pid is None
    assert 777 not in fleet.helper_pids()


def test_a_reaped_worker_departs_and_frees_what_it_held(table):
    record = table.spawn()
    closed = []
    record.channel = type("Channel", (), {"close": lambda self: closed.append(True)})()
    slot = record.slot
    table.reap(record)
    assert table.fleet.release_departed() == [record]
    assert table.fleet.get(record.pid) is None and closed == [True]
    assert record.slot is None and table.fleet.counters.allocate() == slot


def test_outgoing_then_told_to_stop(table):
    record = table.spawn()
    table.fleet.make_outgoing(record, "max_requests")
    assert record.state is State.OUTGOING and table.fleet.outgoing() == [record]
    table.fleet.told_to_stop(record.pid)
    assert record.state is State.STOPPING and record.stopped_on_purpose
    assert table.fleet.outgoing() == [record]  # it still serves, not counted


def test_a_candidate_becomes_the_template_and_leaves_workers(table):
    fleet = table.fleet
    record = table.spawn()
    fleet.make_candidate(record)
    assert record in fleet.spawners()
    fleet.template_ready(record)
    assert record.role is Role.TEMPLATE and record.pid not in table.gunicorn_workers
    assert record.worker.tmp.closed and record.slot is None
    assert fleet.set_template(record) is None and fleet.current_spawner() is record
    assert record.pid in fleet.helper_pids()


def test_the_preloader_keeps_no_standby_while_a_template_takes_the_spawns(table):
    fleet = table.fleet
    fleet.standby_ready(table.preloader, 777)
    assert fleet.unneeded_standby() is None  # the preloader spawns
    template = table.spawn()
    fleet.make_candidate(template)
    fleet.template_ready(template)
    fleet.set_template(template)
    # One of the preloader's requests in flight: its standby may be the one to take it.
    fleet.sent(fleet.queue(Worker(99), table.preloader, None, None))
    assert fleet.unneeded_standby() is None
    fleet.forget_pending(99)
    assert fleet.unneeded_standby() == 777
    fleet.kill_standby(table.preloader, 777, signal.SIGTERM)
    assert (777, signal.SIGTERM) in table.signals and fleet.unneeded_standby() is None
    fleet.standby_ready(table.preloader, 778)  # forked again before the template died
    template.stuck = True  # not usable: the preloader spawns again, and keeps its standby
    assert fleet.current_spawner() is table.preloader and fleet.unneeded_standby() is None


def test_a_candidate_given_back_is_a_worker_again(table):
    record = table.spawn()
    table.fleet.make_candidate(record)
    table.fleet.give_back_candidate(record)
    assert record.state is State.SERVING and record not in table.fleet.spawners()


def test_retiring_leaves_the_slot_and_waits_for_spawns_in_flight(table):
    fleet = table.fleet
    record = fleet.queue(Worker(1), table.preloader, None, None)
    fleet.sent(record)
    fleet.retire(table.preloader)
    assert fleet.preloader is None and table.preloader.retiring
    assert table.signals == []  # a spawn waits on it
    fleet.checked_in(1, 4242)
    fleet.close_retired()
    assert table.signals == [(table.preloader.pid, signal.SIGTERM)]


def test_a_booting_preloader_is_killed_when_retired(table):
    fleet = table.fleet
    booting = fleet.add_preloader(table.pid(), None, 2, None, next_generation=True)
    assert fleet.next_preloader is booting and fleet.current_spawner() is table.preloader
    fleet.retire(booting)
    assert fleet.next_preloader is None and booting.killed_on_purpose
    assert table.signals == [(booting.pid, signal.SIGKILL)]


def test_a_hups_preloader_takes_over(table):
    fleet = table.fleet
    new = fleet.add_preloader(table.pid(), None, 2, None, next_generation=True)
    fleet.spawner_ready(new)
    assert fleet.switch_preloader() is table.preloader
    assert fleet.preloader is new and fleet.next_preloader is None


def test_seats_are_handed_from_a_leaving_worker_to_its_replacement(table):
    fleet = table.fleet
    old = table.spawn()
    made = []
    make = lambda: made.append(object()) or [made[-1]]  # noqa: E731
    first = fleet.seat_for(old, set(), ADDRESS, make)
    new = fleet.queue(Worker(9), table.preloader, None, None)
    assert fleet.seat_for(new, {old.pid}, ADDRESS, make) == first and len(made) == 1
    other = fleet.queue(Worker(10), table.preloader, None, None)
    assert fleet.seat_for(other, set(), ADDRESS, make) != first and len(made) == 2


def test_a_reaped_candidate_given_back_leaves_the_table(table):
    fleet = table.fleet
    record = table.spawn()
    fleet.make_candidate(record)
    table.reap(record)
    assert fleet.release_departed() == [record]
    assert fleet.get(record.pid) is record  # its channel is read until its EOF
    fleet.give_back_candidate(record)
    assert fleet.get(record.pid) is None and record.channel is None


def test_two_workers_asked_at_once_get_two_seats(table):
    fleet = table.fleet
    old = table.spawn()
    made = []
    make = lambda: made.append(object()) or [made[-1]]  # noqa: E731
    fleet.seat_for(old, set(), ADDRESS, make)
    first, second = (fleet.queue(Worker(age), table.preloader, None, None) for age in (8, 9))
    # A worker asked for has no pid yet: it keeps its seat whatever `leaving` holds.
    leaving = {old.pid, None}
    seats = {fleet.seat_for(record, leaving, ADDRESS, make)[0] for record in (first, second)}
    assert len(seats) == 2


class Listener:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


def test_a_seat_is_handed_on_only_for_the_same_addresses(table):
    fleet = table.fleet
    old = table.spawn()
    made = []
    make = lambda: made.append(Listener()) or [made[-1]]  # noqa: E731
    first = fleet.seat_for(old, set(), ADDRESS, make)
    # A HUP changed `bind`: the replacement of a leaving worker gets a new seat.
    moved = (("127.0.0.1", 9000),)
    new = fleet.queue(Worker(9), table.preloader, None, None)
    assert fleet.seat_for(new, {old.pid}, moved, make) != first and len(made) == 2
    table.reap(old)
    fleet.release_departed()
    fleet.close_unused_seats()
    assert made[0].closed and not made[1].closed
    assert [seat.address for seat in fleet.seats.values()] == [moved]


def test_a_seat_that_cannot_be_bound_leaves_the_table_as_it_was(table):
    fleet = table.fleet
    record = fleet.queue(Worker(1), table.preloader, None, None)

    def make():
        raise OSError(98, "Address already in use")

    with pytest.raises(OSError):
        fleet.seat_for(record, set(), ADDRESS, make)
    assert fleet.seats == {} and record.seat is None
