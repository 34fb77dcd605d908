"""What a pre_fork hook leaves for its worker (shared/hookstate.py), in-process."""
import logging
import pickle
import threading

from gunicorn_smartspawn.shared import hookstate


class Host:
    """Stands for the arbiter: what its methods assign on self is its own."""

    def __init__(self):
        self.own = 1

    def later(self):
        self.also_own = 2


class Worker:
    def __init__(self):
        self.age = 1
        self.tmp = object()


def test_only_what_pre_fork_set_or_replaced_on_the_worker_travels():
    worker = Worker()
    before = dict(vars(worker))
    worker.shard, worker.tmp = 7, object()
    assert set(hookstate.worker_changes(worker, before)) == {"shard", "tmp"}


def test_only_the_applications_attributes_of_the_server_travel():
    server = Host()
    server.later()
    server.seats = {1: "a"}
    assert hookstate.app_attributes(server) == {"seats": {1: "a"}}


def test_without_source_nothing_of_the_server_travels_and_it_is_said_once(caplog):
    sourceless = type("Sourceless", (), {})  # inspect.getsource cannot find it
    server = sourceless()
    server.seats, server.cfg = {}, object()
    state = hookstate.HookState(logging.getLogger("hookstate-test"))
    worker = Worker()
    before = dict(vars(worker))
    worker.shard = 3
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            data = state.capture(server, worker, before)
    assert pickle.loads(data) == {"worker": {"shard": 3}, "server": {}}
    assert caplog.text.count("gunicorn's source is not installed") == 1


def test_an_unpicklable_value_stays_behind_named_once(caplog):
    server = Host()
    server.lock, server.seats = threading.Lock(), {2: "b"}
    state = hookstate.HookState(logging.getLogger("hookstate-test"))
    worker = Worker()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            data = state.capture(server, worker, dict(vars(worker)))
    assert pickle.loads(data) == {"worker": {}, "server": {"seats": {2: "b"}}}
    assert caplog.text.count("server.lock, set by a hook, cannot reach workers") == 1


def test_nothing_to_send_is_none():
    state = hookstate.HookState(logging.getLogger("hookstate-test"))
    worker = Worker()
    assert state.capture(Host(), worker, dict(vars(worker))) is None
