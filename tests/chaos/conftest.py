"""Chaos fixtures: the `chaos` marker and servers watched for their whole process tree."""
import pytest

from chaos.helpers import TreeWatch


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "chaos: fault injection against a real server under load (tests/chaos)")


@pytest.fixture
def chaos_server(make_server):
    """make_server(...) whose process tree is sampled in the background from start().

    Every pid ever seen under the master is handed to the harness, so its teardown
    fails on any survivor, even a worker that lived for a few milliseconds between
    two of the test's own looks. `server.watch` is the TreeWatch.
    """
    watches = []

    def make(*args, **kwargs):
        server = make_server(*args, **kwargs)
        server.watch = TreeWatch(server)
        watches.append(server.watch)
        return server

    yield make
    for watch in watches:  # before make_server's teardown, which checks the survivors
        watch.stop()
