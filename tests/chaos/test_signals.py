"""Signal storms and stops: TTIN/TTOU, SIGSTOP/SIGCONT of the preloader, graceful TERM."""
import concurrent.futures
import contextlib
import os
import re
import signal
import time

import pytest

from chaos.helpers import URG_ONLY, Load, check_log, ctl_stats, finish, rng_for, settle
from conftest import wait_for

pytestmark = pytest.mark.chaos


def steady_target(server, timeout=30.0):
    """Wait until the tree, the master's table and its target agree; return the target."""
    def agreed():
        stats = ctl_stats(server)
        live = len(server.worker_pids())
        target = stats["workers_target"]
        return target if stats["workers_current"] == target == live else None
    return wait_for(agreed, timeout, interval=0.05,
                    what="the workers to match the master's target\n%s" % server.log())


def back_to(server, workers):
    """One TTIN/TTOU at a time, each waited for, until the master's target is `workers`."""
    for _ in range(60):
        target = ctl_stats(server)["workers_target"]
        if target == workers:
            return
        server.signal(signal.SIGTTIN if target < workers else signal.SIGTTOU)
        wait_for(lambda target=target: ctl_stats(server)["workers_target"] != target,
                 what="the master to handle a TTIN/TTOU")
    raise AssertionError("could not bring the target back to %d" % workers)


def storm(server, rng, signals, bursts, burst_size):
    """Bursts of one signal each, sent back to back (the kernel may merge some)."""
    sent = []
    for _ in range(bursts):
        sig = rng.choice(signals)
        for _ in range(rng.randint(1, burst_size)):
            server.signal(sig)
            sent.append(sig)
        time.sleep(rng.uniform(0.0, 0.04))
    return sent


@pytest.mark.parametrize("during", ["steady", "a refork"])
def test_ttin_ttou_storms(chaos_server, request, during):
    rng = rng_for(request)
    config = URG_ONLY if during == "a refork" else ""
    server = chaos_server(workers=3, config=config).start()
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        if during == "a refork":
            server.signal(signal.SIGURG)
            server.wait_log(r"Refork to generation 2")
        sent = storm(server, rng, [signal.SIGTTIN, signal.SIGTTOU], bursts=25, burst_size=4)
        target = steady_target(server)
        ins = sent.count(signal.SIGTTIN)
        # Merged signals make the exact target unknowable; it stays within these bounds.
        assert 1 <= target <= 3 + ins, (target, ins, len(sent))
        back_to(server, 3)
        # A one-sided storm: up by many at once, then down again.
        storm(server, rng, [signal.SIGTTIN], bursts=3, burst_size=3)
        up = steady_target(server)
        assert 4 <= up <= 12, up
        storm(server, rng, [signal.SIGTTOU], bursts=3, burst_size=3)
        steady_target(server)
        back_to(server, 3)
        settle(server, 3, what="after the TTIN/TTOU storms")
        if during == "a refork":
            # TTOU may stop the candidate: the refork then ends abandoned.
            wait_for(lambda: re.search(r"refork to generation 2 \(URG\) (done|abandoned)",
                                       server.log()), timeout=20,
                     what="the refork to end\n" + server.log())
        load.wait_ok(20)
    # TTOU stops workers gracefully: no request may be lost.
    assert load.failures == [], load.summary()
    check_log(server)
    finish(server)


def test_sigstop_of_the_preloader_for_a_moment(chaos_server):
    """A stopped preloader delays spawns; nothing is lost and SIGCONT resumes them.

    Its standby, forked ahead of need, is a process of its own: it still serves one spawn.
    """
    server = chaos_server(workers=3).start()
    preloader = server.preloader_pid()
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        # The standby is forked 0.1 s after the last hand-over: whether it is there at
        # the stop must not depend on how busy the machine is.
        wait_for(server.standby_pids, what=lambda: "a standby\n" + server.log())
        os.kill(preloader, signal.SIGSTOP)
        try:
            server.signal(signal.SIGTTIN)  # the standby serves it
            wait_for(lambda: len(server.worker_pids()) == 4, timeout=3,
                     what=lambda: "the standby to serve the TTIN\n" + server.log())
            # A spawn the stopped preloader cannot serve, which has no standby left: its
            # answer is due within the master's 5 s spawn timeout, so every wait here is
            # bounded well below it.
            os.kill(server.worker_pids()[0], signal.SIGTERM)
            wait_for(lambda: len(server.worker_pids()) == 3, timeout=2,
                     what=lambda: "the TERMed worker to exit\n" + server.log())
            # Let the three remaining workers carry the load for a while.
            load.wait_ok(5, timeout=2)
            time.sleep(0.5)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the wait's failure tells why
                os.kill(preloader, signal.SIGCONT)
        assert "got no answer" not in server.log(), server.log()
        settle(server, 4, what="after SIGCONT")
        assert server.preloader_pid() == preloader
        server.signal(signal.SIGTTOU)
        settle(server, 3)
        load.wait_ok(10)
    assert load.failures == [], load.summary()
    check_log(server)
    finish(server)


def test_sigstop_of_the_preloader_beyond_the_spawn_timeout(chaos_server):
    """A preloader stopped for good is declared stuck, killed and replaced."""
    server = chaos_server(workers=3).start()
    preloader = server.preloader_pid()
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        wait_for(server.standby_pids, what=lambda: "a standby\n" + server.log())
        os.kill(preloader, signal.SIGSTOP)
        server.signal(signal.SIGTTIN)  # the standby, forked before the stop, serves it
        wait_for(lambda: len(server.worker_pids()) == 4, timeout=3,
                 what=lambda: "the standby to serve the TTIN\n" + server.log())
        server.signal(signal.SIGTTIN)  # the stopped preloader never answers this one
        server.wait_log(r"Spawn of worker \d+ got no answer within 5s from preloader "
                        r"\(pid: %d, gen=1\); killing it" % preloader, timeout=15)
        settle(server, 5, what="after the stuck preloader was replaced")
        assert server.preloader_pid() != preloader
        load.wait_ok(10)
    assert load.failures == [], load.summary()
    check_log(server, allowed=[
        r"Spawn of worker \d+ got no answer",
        r"preloader \(pid: %d, gen=1\) was sent SIGKILL" % preloader,
        r"preloader \(pid: %d, gen=1\) exited; the workers keep" % preloader])
    finish(server)


def test_term_with_a_stopped_preloader_still_exits_cleanly(chaos_server):
    server = chaos_server(workers=2).start()
    os.kill(server.preloader_pid(), signal.SIGSTOP)
    assert server.get_ok()
    finish(server)


SLOW_CASES = {
    # name: (server kwargs, number of slow requests in flight, URG first)
    "sync": (dict(workers=3), 3, False),
    "gthread": (dict(workers=2, args=["--threads", "4"]), 6, False),
    "sync with a template": (dict(workers=3, config=URG_ONLY), 3, True),
}


@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_graceful_term_lets_slow_in_flight_requests_complete(chaos_server, case):
    kwargs, in_flight, urg = SLOW_CASES[case]
    kwargs = {**kwargs, "args": [*kwargs.get("args", []), "--graceful-timeout", "8"]}
    server = chaos_server(**kwargs).start()
    if urg:
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
        settle(server, 3)
    seen = server.log().count("GET /sleep")
    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        slow = [pool.submit(server.request, "/sleep?2.5", 15) for _ in range(in_flight)]
        wait_for(lambda: server.log().count("GET /sleep") - seen >= in_flight,
                 what="%d slow requests in flight\n%s" % (in_flight, server.log()))
        started = time.monotonic()
        finish(server, sig=signal.SIGTERM)
        took = time.monotonic() - started
        results = [f.result(timeout=15) for f in slow]
    assert [status for status, _ in results] == [200] * in_flight, results
    assert took < 8, "stopping took %.1fs, more than graceful_timeout" % took
    check_log(server)
