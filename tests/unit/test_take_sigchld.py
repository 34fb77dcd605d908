"""A spawner owns SIGCHLD while it forks (spawner/base.py take_sigchld), in-process."""
import signal

import pytest

from gunicorn_smartspawn.spawner.base import take_sigchld


@pytest.fixture(autouse=True)
def sigchld():
    saved = signal.getsignal(signal.SIGCHLD)
    yield
    signal.signal(signal.SIGCHLD, saved)


@pytest.mark.parametrize("set_by_the_app", [signal.SIG_IGN, lambda sig, frame: None])
def test_sigchld_is_the_default_while_forking_and_comes_back_after(set_by_the_app):
    signal.signal(signal.SIGCHLD, set_by_the_app)
    assert take_sigchld() is set_by_the_app
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def test_sigchld_already_at_its_default_is_left_alone():
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    assert take_sigchld() is None
