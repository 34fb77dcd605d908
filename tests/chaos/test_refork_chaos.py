"""Faults around a refork (fork_worker): the template killed, URG storms, HUP mid-refork."""
import os
import re
import signal
import time

import pytest

from chaos.helpers import (
    URG_ONLY, Injector, Load, check_log, ctl_stats, finish, rng_for, settle,
)
from conftest import wait_for

pytestmark = pytest.mark.chaos

# The hook holds the candidate in its promotion long enough to hit it there.
SLOW_PROMOTION = '''
import time
fork_worker = 10**9  # URG only: the load must not reach a threshold
def pre_template_fork(worker):
    time.sleep(1.0)
'''

REFORK_EVENT = re.compile(
    r"(?P<start>Refork to generation (?P<gen>\d+) )|"
    r"(?P<end>refork to generation (?P<endgen>\d+) \([^)]*\) (done|abandoned))")


def refork_sequence(server):
    """[("start"|"end", generation)] in log order."""
    out = []
    for m in REFORK_EVENT.finditer(server.log()):
        out.append(("start", int(m["gen"])) if m["start"] else ("end", int(m["endgen"])))
    return out


def assert_one_refork_at_a_time(server):
    sequence = refork_sequence(server)
    running = None
    for kind, gen in sequence:
        if kind == "start":
            assert running is None, "refork %s started while %s ran: %s" % (gen, running,
                                                                          sequence)
            running = gen
        else:
            assert running == gen, "end of refork %s while %s ran: %s" % (gen, running,
                                                                         sequence)
            running = None
    return sequence


def reforks_settled(server):
    """No refork runs and none is pending, in the master's own view (show stats), twice
    0.5 s apart (a URG sent last may still be waiting for the master's next turn), and
    every refork the log says started has ended."""
    def idle():
        stats = ctl_stats(server)
        return not stats["refork_in_progress"] and not stats["refork_pending"]
    for _ in range(2):
        wait_for(idle, timeout=30, what="reforks to end\n" + server.log())
        time.sleep(0.5)
    wait_for(idle, timeout=30, what="reforks to end\n" + server.log())
    sequence = refork_sequence(server)
    assert not sequence or sequence[-1][0] == "end", sequence


def template_pids(server):
    return server.watch.count("smartspawn template")


def titles_generations(server):
    return sorted(int(re.search(r"gen=(\d+)", t).group(1))
                  for _, t in server.children() if "worker [" in t)


@pytest.mark.parametrize("phase", ["promoting", "forking"])
def test_template_killed_during_a_refork(chaos_server, phase):
    server = chaos_server(workers=3, config=SLOW_PROMOTION).start()
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        server.signal(signal.SIGURG)
        if phase == "promoting":
            # The candidate has left the serving loop and waits in pre_template_fork.
            (template,) = wait_for(lambda: template_pids(server), what="the candidate")
            assert "gen=2) ready" not in server.log()
        else:
            match = server.wait_log(r"template \(pid: (\d+), gen=2\) ready", timeout=15)
            template = int(match.group(1))
        os.kill(template, signal.SIGKILL)
        server.wait_log(r"refork to generation 2 \(URG\) abandoned: the template "
                        r"\(pid: %d\)" % template, timeout=15)
        settle(server, 3, what="after the template was killed")
        assert template_pids(server) == []
        load.wait_ok(20)
        # The next refork works, from a new template.
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation \d+ \(URG\) done", timeout=20)
        settle(server, 3, what="after the next refork")
        server.single("smartspawn template")  # a fork of it carries its title a moment
        load.wait_ok(20)
    assert load.failures == [], load.summary()
    assert_one_refork_at_a_time(server)
    check_log(server, allowed=[
        r"template \(pid: %d, gen=2\) was sent SIGKILL" % template,
        r"Worker \(pid:%d\) was sent SIGKILL" % template,
        r"template \(pid: %d, gen=2\) exited; spawning from the preloader" % template,
        r"Worker \d+ was not spawned: template \(pid: %d" % template,
        # a spawn request the master sent as the kill landed
        r"Spawn request to template \(pid: %d, gen=2\) failed" % template])
    finish(server)


# The candidate makes the master TTOU it: the master stops its oldest worker, which the
# candidate still is until it reports ready as the template. The TERM is ignored for the
# hook's length, as if it had landed just after the worker checked for one.
TTOU_FROM_THE_CANDIDATE = URG_ONLY + '''
import os, signal, time
def pre_template_fork(worker):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.kill(os.getppid(), signal.SIGTTOU)
    time.sleep(0.5)
'''


def test_ttou_of_the_candidate_during_its_promotion_abandons_the_refork(chaos_server):
    # A candidate being stopped is never taken as the template: a TERM that lands late
    # would make it exit then, taking the spawns sent to it.
    server = chaos_server(workers=3, config=TTOU_FROM_THE_CANDIDATE).start()
    with Load(server, clients=2) as warm_up:
        warm_up.wait_ok(10)
    assert warm_up.failures == [], warm_up.summary()
    # Every worker idle: the candidate is the oldest, the one TTOU stops. A client has
    # its response before the worker marks its request done: wait for the marks, or an
    # idle younger worker is preferred to the oldest (CI, 3.13).
    def idle_workers():
        workers = server.control("show workers")["workers"]
        return None if any(w["in_flight"] for w in workers) else workers

    workers = wait_for(idle_workers, what="every worker idle")
    oldest = min(workers, key=lambda w: w["age"])["pid"]
    server.signal(signal.SIGURG)
    server.wait_log(r"Refork to generation 2 \(URG\): worker \(pid: %d," % oldest)
    with Load(server, clients=2) as load:
        server.wait_log(r"refork to generation 2 \(URG\) abandoned: the chosen worker "
                        r"\(pid: \d+\) is being stopped \(SIGTERM\)", timeout=15)
        settle(server, 2, what="after the TTOU")
        wait_for(lambda: not template_pids(server), what="the candidate to exit")
        load.wait_ok(20)
    assert load.failures == [], load.summary()
    check_log(server)
    finish(server)


@pytest.mark.parametrize("threads", [1, 4])
def test_urg_storm_runs_one_refork_at_a_time(chaos_server, threads):
    server = chaos_server(workers=3, config=URG_ONLY, args=["--threads", str(threads)]).start()
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        with Injector(lambda: server.signal(signal.SIGURG) or True, every=0.025,
                      count=40) as urgs:
            urgs.join(10)
        reforks_settled(server)
        settle(server, 3, what="after the URG storm")
        load.wait_ok(20)
    sequence = assert_one_refork_at_a_time(server)
    assert len(urgs.events) == 40
    assert sequence, "the storm started no refork"
    assert len(set(titles_generations(server))) == 1, titles_generations(server)
    assert len(template_pids(server)) == 1
    assert load.failures == [], load.summary()
    check_log(server)
    finish(server)


@pytest.mark.parametrize("phase", ["promoting", "forking"])
def test_hup_during_a_refork_serves_the_new_code(chaos_server, phase):
    server = chaos_server(workers=3, config=SLOW_PROMOTION).start()
    app_py = server.root / "app.py"
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        server.signal(signal.SIGURG)
        if phase == "promoting":
            wait_for(lambda: template_pids(server), what="the candidate")
        else:
            server.wait_log(r"template \(pid: \d+, gen=2\) ready", timeout=15)
        app_py.write_text(app_py.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
        server.signal(signal.SIGHUP)
        server.wait_log(r"Generation \d+ is ready", timeout=20)
        wait_for(lambda: {server.get_json()["version"] for _ in range(12)} == {"v2"},
                 timeout=20, what="only v2 to be served\n" + server.log())
        settle(server, 3, what="after the HUP")
        # The refork's template retired with its generation.
        wait_for(lambda: not template_pids(server), what="the old template to exit")
        gens = titles_generations(server)
        assert len(set(gens)) == 1, gens
        load.wait_ok(20)
    assert load.failures == [], load.summary()
    assert_one_refork_at_a_time(server)
    check_log(server)
    finish(server)


# Slow promotions and slow worker boots: a refork lasts long enough for kills to land in it.
SLOW_REFORK = URG_ONLY + '''
import time
def pre_template_fork(worker):
    time.sleep(0.3)
def post_fork(server, worker):
    time.sleep(0.15)
'''


def test_workers_and_templates_killed_at_random_during_reforks(chaos_server, request):
    """Kills hit old workers, new ones, candidates and templates; every refork still ends."""
    rng = rng_for(request)
    server = chaos_server(workers=3, config=SLOW_REFORK).start()

    def kill_worker_or_template():
        pids = [pid for pid, title in server.children()
                if "worker [" in title or ("template" in title and rng.random() < 0.3)]
        if not pids:
            return None
        pid = rng.choice(pids)
        os.kill(pid, signal.SIGKILL)
        return pid

    with Load(server, clients=2) as load:
        load.wait_ok(10)
        with Injector(kill_worker_or_template, every=0.2, count=14) as kills, \
                Injector(lambda: server.signal(signal.SIGURG) or True, every=0.45,
                         count=6) as urgs:
            kills.join(20)
            urgs.join(20)
        reforks_settled(server)
        settle(server, 3, what="after kills during reforks")
        load.wait_ok(20)
    assert len(load.failures) <= len(kills.events), load.summary()
    assert load.unexplained(kills.times) == [], load.summary()
    assert_one_refork_at_a_time(server)
    # A process just forked from the template carries its title a moment.
    wait_for(lambda: len(template_pids(server)) <= 1, what="at most one template")
    check_log(server, allowed=[r"was sent SIGKILL", r"abandoned",
                               r"template \(pid: \d+, gen=\d+\) exited; spawning from",
                               r"Worker \d+ was not spawned: template"])
    finish(server)
