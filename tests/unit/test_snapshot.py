"""The state file and the control socket show the same snapshot of the server."""
import types

import pytest

from fakes import Table
from gunicorn_smartspawn.master import snapshot


@pytest.fixture
def server(monkeypatch):
    table = Table(monkeypatch)
    arbiter = types.SimpleNamespace(
        fleet=table.fleet, pid=1, proc_name="app:app", generation=1, smart=True,
        num_workers=3, cfg=types.SimpleNamespace(fork_worker=[1000]),
        reforker=types.SimpleNamespace(stats=lambda: {"reforks": 2, "refork_pending": False}),
        lifecycle=types.SimpleNamespace(stats={"memory_samples": 5}),
        coordinator=types.SimpleNamespace(stats=lambda workers: {"oob_grants": 4}),
        spawn_latency=snapshot.Latencies())
    return table, arbiter


def test_each_worker_row_is_what_the_control_socket_adds_plus_gunicorns_fields(
        server, monkeypatch):
    table, arbiter = server
    monkeypatch.setattr(snapshot.time, "monotonic", lambda: 1000.0)
    serving, leaving = table.spawn(), table.spawn()
    table.fleet.make_outgoing(leaving, "max_requests")
    rows = {row["pid"]: row for row in snapshot.state_file(arbiter)["processes"]}
    for record, role in ((serving, "worker"), (leaving, "worker (outgoing)")):
        socket_fields = snapshot.control_socket_worker(table.fleet, record.pid)
        # gunicorn's show workers has `age` and `last_heartbeat` (seconds) of its own.
        assert rows[record.pid] == {"pid": record.pid, "role": role,
                                    "age": record.worker.age,
                                    "last_heartbeat": 1000.0 - record.worker.tmp.mtime,
                                    **socket_fields}
    assert rows[leaving.pid]["outgoing"] == "max_requests"
    assert snapshot.control_socket_worker(table.fleet, table.preloader.pid) == {}
    assert rows[table.preloader.pid]["role"] == "preloader"


def test_the_server_fields_are_the_same_in_both_the_lifecycle_flat_on_the_socket(server):
    _, arbiter = server
    in_file = snapshot.state_file(arbiter)
    on_socket = snapshot.control_socket_stats(arbiter)
    assert in_file["lifecycle"] == {"memory_samples": 5} and on_socket["memory_samples"] == 5
    for name, value in on_socket.items():
        assert in_file.get(name, in_file["lifecycle"].get(name)) == value, name
    assert on_socket["reforks"] == 2 and on_socket["fork_worker"] == [1000]
    assert on_socket["preloader_pid"] == arbiter.fleet.preloader.pid


def test_a_worker_row_says_busy_in_flight_and_the_ages_of_its_last_request_and_beat(
        server, monkeypatch):
    table, arbiter = server
    monkeypatch.setattr(snapshot.time, "monotonic", lambda: 1000.0)
    idle, busy, new = table.spawn(), table.spawn(), table.spawn()
    counters = table.fleet.counters
    idle.worker.tmp.mtime = 999.5
    counters.set(idle.slot, "last_request_us", 990_000_000)
    counters.set(busy.slot, "in_flight", 3)
    counters.set(busy.slot, "last_request_us", 999_750_000)
    rows = {row["pid"]: row for row in snapshot.state_file(arbiter)["processes"]}
    assert {k: rows[idle.pid][k] for k in ("busy", "in_flight", "last_request",
                                            "last_heartbeat")} == {
        "busy": False, "in_flight": 0, "last_request": 10.0, "last_heartbeat": 0.5}
    assert (rows[busy.pid]["busy"], rows[busy.pid]["in_flight"],
            rows[busy.pid]["last_request"]) == (True, 3, 0.25)
    assert rows[new.pid]["last_request"] is None  # none served yet
    assert "last_request_us" not in rows[idle.pid]
    new.worker.tmp.close()
    assert snapshot.worker_fields(table.fleet, new)["last_heartbeat"] is None


def test_a_worker_without_a_counter_slot_says_it_cannot_tell(server):
    table, _ = server
    record = table.spawn()
    table.fleet.counters.release(record.slot)
    record.slot = None
    fields = snapshot.worker_fields(table.fleet, record)
    assert (fields["busy"], fields["in_flight"], fields["last_request"]) == (None, None, None)
