"""Parity: one scenario under plain gunicorn and under smartspawn, the same outcome.

A case is a function ``scenario(server) -> outcome``: a dict of what an operator sees
(exit code, whether it serves, failed requests, the workers' uid and gid...). `run_both`
runs it against a plain gunicorn server (gunicorn's own worker class) and against a
smartspawn one started with the same arguments, one after the other, and returns both
outcomes. A case asserts that they are equal, and that gunicorn's is the one gunicorn is
known to give: two servers failing alike prove nothing.

A scenario may send smartspawn's signals (URG) to both: plain gunicorn ignores SIGURG.
"""
import os

import pytest

# smartspawn's worker class -> gunicorn's own, which it extends.
PLAIN_OF = {"smartspawn.Worker": "sync", "smartspawn.ThreadWorker": "gthread"}

requires_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: drops privileges to another user and group")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/parity/" in str(item.fspath):
            item.add_marker(pytest.mark.parity)


@pytest.fixture
def run_both(make_server):
    """run_both(scenario, worker_class="smartspawn.Worker", **make_server kwargs)
    -> (gunicorn's outcome, smartspawn's outcome).

    Each server is torn down (and checked for survivors) before the next one starts.
    """
    def run(scenario, worker_class="smartspawn.Worker", **kwargs):
        outcomes = []
        for kind in (PLAIN_OF[worker_class], worker_class):
            server = make_server(worker_class=kind, **kwargs)
            try:
                outcomes.append(scenario(server))
            finally:
                server.teardown()
        return tuple(outcomes)
    return run
