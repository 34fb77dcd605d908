"""What the app's import installs is recorded, the spawner's own dispositions come back,
and a worker gets the app's on top of gunicorn's (appsignals.py), in-process."""
import os
import signal

import pytest
from gunicorn.workers import base

from gunicorn_smartspawn.worker import appsignals


@pytest.fixture(autouse=True)
def own_dispositions():
    """Every test leaves this process's dispositions as it found them."""
    saved = appsignals.dispositions()
    yield saved
    for sig, handler in saved.items():
        try:
            signal.signal(sig, handler)
        except (OSError, ValueError):
            pass  # SIGKILL, SIGSTOP
    appsignals.worker_dispositions = None


def test_the_handler_table_is_what_gunicorns_worker_installs():
    worker = base.Worker.__new__(base.Worker)
    worker.PIPE = os.pipe()
    os.set_blocking(worker.PIPE[1], False)
    try:
        worker.init_signals()
        installed = {sig for sig, handler in appsignals.dispositions().items()
                     if getattr(handler, "__self__", None) is worker}
    finally:
        signal.set_wakeup_fd(-1)
        for fd in worker.PIPE:
            os.close(fd)
    assert installed == appsignals.GUNICORN_SIGNALS


def test_record_keeps_what_the_import_changed_and_gives_the_spawner_its_own_back(
        own_dispositions):
    def handler(sig, frame):
        pass

    def load():
        signal.signal(signal.SIGUSR2, handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # gunicorn's TERM, replaced
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    recorded = appsignals.record(load)
    assert recorded.changed == {signal.SIGUSR2: handler, signal.SIGTERM: signal.SIG_DFL,
                                signal.SIGCHLD: signal.SIG_IGN}
    assert recorded.names() == "SIGUSR2, SIGTERM, SIGCHLD"
    assert appsignals.dispositions() == own_dispositions


def test_what_the_app_sees_at_import_calls_the_workers_own_handler():
    seen, calls = {}, []

    def load():
        seen["term"] = signal.getsignal(signal.SIGTERM)

        def flush_then_chain(sig, frame):
            calls.append("flushed")
            seen["term"](sig, frame)

        signal.signal(signal.SIGTERM, flush_then_chain)

    recorded = appsignals.record(load)
    # Later, in a worker: gunicorn's init_signals, then the app's dispositions.
    signal.signal(signal.SIGTERM, lambda sig, frame: calls.append("the worker's"))
    recorded.apply()
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert calls == ["flushed", "the worker's"]


def test_gunicorns_handler_does_the_spawners_own_before_any_worker_exists():
    calls = []
    handler = appsignals.GunicornHandler(signal.SIGTERM, lambda sig, frame: calls.append(sig))
    handler(signal.SIGTERM, None)
    assert calls == [signal.SIGTERM]
    appsignals.GunicornHandler(signal.SIGWINCH, signal.SIG_IGN)(signal.SIGWINCH, None)


def test_gunicorns_handler_installed_for_another_signal_acts_for_its_own():
    calls = []

    def load():
        signal.signal(signal.SIGUSR2, signal.getsignal(signal.SIGTERM))

    recorded = appsignals.record(load)
    signal.signal(signal.SIGTERM, lambda sig, frame: calls.append("TERM's handler"))
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)   # gunicorn's reset
    recorded.apply()
    signal.getsignal(signal.SIGUSR2)(signal.SIGUSR2, None)
    assert calls == ["TERM's handler"]


def test_apply_leaves_the_signals_the_worker_keeps():
    recorded = appsignals.AppSignals({signal.SIGURG: signal.SIG_IGN,
                                      signal.SIGUSR2: signal.SIG_IGN})
    signal.signal(signal.SIGURG, signal.SIG_DFL)
    recorded.apply(keep={signal.SIGURG})
    assert signal.getsignal(signal.SIGURG) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN


def test_a_real_time_signal_is_named():
    assert appsignals.signal_name(signal.SIGRTMIN + 1) == "SIGRTMIN+1"


def test_a_worker_that_may_become_a_template_records_stand_ins_for_its_children():
    calls = []
    signal.signal(signal.SIGTERM, lambda sig, frame: calls.append("worker-0's"))
    seen = {}

    def load():
        seen["term"] = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda sig, frame: seen["term"](sig, frame))

    recorded = appsignals.record_in_worker(load, may_fork=True)
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    # In a child of the template: its own gunicorn handler, then the app's on top.
    signal.signal(signal.SIGTERM, lambda sig, frame: calls.append("the child's"))
    recorded.apply()
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert calls == ["worker-0's", "the child's"]


def test_a_worker_that_imports_the_app_for_itself_only_shows_it_its_own_handlers():
    def handler(sig, frame):
        pass

    signal.signal(signal.SIGTERM, handler)
    seen = []
    recorded = appsignals.record_in_worker(
        lambda: seen.append(signal.getsignal(signal.SIGTERM)), may_fork=False)
    assert seen == [handler] and not recorded


def test_an_interval_timer_and_faulthandler_are_the_workers_not_the_spawners():
    """setitimer and faulthandler.register() at import: getsignal shows neither. The
    spawner is left with no timer (its ticks are for the workers) and no dump handler;
    apply() arms and registers them again."""
    import faulthandler

    def load():
        signal.setitimer(signal.ITIMER_VIRTUAL, 30.0, 30.0)
        faulthandler.register(signal.SIGUSR2, all_threads=False)

    try:
        recorded = appsignals.record(load)
        assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)
        assert not faulthandler.unregister(signal.SIGUSR2)  # not registered here any more
        assert recorded and "ITIMER_VIRTUAL (interval timer)" in recorded.names()
        assert "SIGUSR2 (faulthandler)" in recorded.names()
        recorded.apply()
        assert signal.getitimer(signal.ITIMER_VIRTUAL)[1] == 30.0
        assert faulthandler.unregister(signal.SIGUSR2)  # registered again by apply()
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        faulthandler.unregister(signal.SIGUSR2)
