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
        spawn_latency=snapshot.Latencies())
    return table, arbiter


def test_each_worker_row_is_what_the_control_socket_adds_plus_gunicorns_age(server):
    table, arbiter = server
    serving, leaving = table.spawn(), table.spawn()
    table.fleet.make_outgoing(leaving, "max_requests")
    rows = {row["pid"]: row for row in snapshot.state_file(arbiter)["processes"]}
    for record, role in ((serving, "worker"), (leaving, "worker (outgoing)")):
        socket_fields = snapshot.control_socket_worker(table.fleet, record.pid)
        assert rows[record.pid] == {"pid": record.pid, "role": role,
                                    "age": record.worker.age, **socket_fields}
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
