"""Processes of the tree killed under load: workers, the preloader, the master, a hung worker."""
import os
import signal
import threading

import pytest

from chaos.helpers import (URG_ONLY, Injector, Load, check_log, finish, kill_random_worker,
                           rng_for, settle)
from conftest import wait_for

pytestmark = pytest.mark.chaos

KILLED = r"was sent SIGKILL"  # gunicorn's ERROR line for a worker killed by SIGKILL


def refork(server, generation):
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation %d \(URG\) done" % generation, timeout=20)


@pytest.mark.parametrize("spawner, threads", [("preloader", 1), ("template", 1),
                                              ("template", 4)])
def test_repeated_sigkill_of_random_workers(chaos_server, request, spawner, threads):
    """Each SIGKILL may lose the one request that worker was serving, never more."""
    rng = rng_for(request)
    server = chaos_server(workers=3, config=URG_ONLY if spawner == "template" else "",
                          args=["--threads", str(threads)]).start()
    if spawner == "template":
        refork(server, 2)
    # One client with threads: a killed gthread worker may hold several of its requests.
    with Load(server, clients=2 if threads == 1 else 1) as load:
        load.wait_ok(20)
        with Injector(lambda: kill_random_worker(server, rng), every=0.25, count=10) as kills:
            kills.join(20)
        settle(server, 3, what="after 10 worker kills")
        load.wait_ok(30)
    assert kills.errors == []
    assert len(kills.events) == 10
    assert len(load.failures) <= len(kills.events), load.summary()
    assert load.unexplained(kills.times) == [], load.summary()
    # Replacements came from the spawner, which imported nothing more.
    assert len(server.lines("imports.txt")) == 1
    server.wait_log(r"Booting worker with pid: \d+ \(gen=%d from %s\)"
                    % (2 if spawner == "template" else 1, spawner))
    check_log(server, allowed=[KILLED])
    finish(server)


def test_repeated_sigkill_of_the_preloader_while_workers_come_and_go(chaos_server, request):
    """The workers serve throughout; each new preloader takes over the spawning."""
    server = chaos_server(workers=3).start()
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        for round_ in range(3):
            old = server.preloader_pid()
            os.kill(old, signal.SIGKILL)
            # A worker that leaves while no preloader is ready is replaced by the next one.
            os.kill(server.worker_pids()[0], signal.SIGTERM)
            # Found by the master's log, not by title: a standby's double fork interrupted
            # by the kill leaves its middle process, titled as the preloader, to the master
            # for a moment (CI, 3.11).
            # Each restart is a new generation: it imports the code on disk now.
            new = int(server.wait_log(r"Started preloader \(pid: (\d+), gen=%d\)"
                                      % (round_ + 2)).group(1))
            server.wait_log(r"preloader \(pid: %d, gen=%d\) loaded the app" % (new, round_ + 2))
            settle(server, 3, what="after preloader kill %d" % (round_ + 1))
            load.wait_ok(10)
    assert load.failures == [], load.summary()
    assert len(server.lines("imports.txt")) == 4  # one import per preloader
    check_log(server, allowed=[r"preloader \(pid: \d+, gen=\d+\) was sent SIGKILL",
                               r"preloader \(pid: \d+, gen=\d+\) exited; the workers keep serving",
                               r"Worker \d+ was not spawned: preloader .* exited"])
    finish(server)


def test_preloader_and_workers_killed_at_random(chaos_server, request):
    """Spawn requests in flight when their preloader dies must be retried, not lost."""
    rng = rng_for(request)
    server = chaos_server(workers=3).start()

    def kill_preloader():
        pids = server.preloader_pids()
        if not pids:
            return None
        os.kill(pids[0], signal.SIGKILL)
        return pids[0]

    with Load(server, clients=2) as load:
        load.wait_ok(10)
        with Injector(lambda: kill_random_worker(server, rng), every=0.15, count=12) as kills, \
                Injector(kill_preloader, every=0.4, count=4) as preloader_kills:
            kills.join(20)
            preloader_kills.join(20)
        settle(server, 3, timeout=30, what="after worker and preloader kills")
        load.wait_ok(20)
    assert len(load.failures) <= len(kills.events), load.summary()
    assert load.unexplained(kills.times) == [], load.summary()
    check_log(server, allowed=[KILLED, r"preloader \(pid: \d+, gen=\d+\) was sent SIGKILL",
                               r"preloader \(pid: \d+, gen=\d+\) exited",
                               r"Worker \d+ was not spawned: preloader .* exited",
                               r"could not fork worker \d+: no standby"])
    finish(server)


@pytest.mark.parametrize("moment", ["steady, after a refork", "while a HUP imports"])
def test_sigkill_of_the_master_takes_the_whole_tree(chaos_server, moment):
    server = chaos_server(workers=3, config=URG_ONLY).start()
    refork(server, 2)
    if moment == "while a HUP imports":
        app_py = server.root / "app.py"
        app_py.write_text("import time\ntime.sleep(60)\n" + app_py.read_text())
        server.signal(signal.SIGHUP)
        wait_for(lambda: len(server.preloader_pids()) == 2, what="the HUP's preloader")
    with Load(server, clients=2) as load:
        load.wait_ok(20)
        before = len(load.failures)
        tree = {pid for pid, _ in server.children()}
        assert any("template" in t for _, t in server.children()), server.children()
        server.signal(signal.SIGKILL)
        assert server.wait_exit() == -signal.SIGKILL
    server.watch.stop()
    assert before == 0, load.summary()
    survivors = server.alive(tree | server.watch.pids, grace=10.0)
    assert survivors == [], {pid: server.watch.titles.get(pid) for pid in survivors}
    # Nobody listens any more.
    with pytest.raises(ConnectionRefusedError):
        server.request("/", timeout=2.0)


def test_hung_workers_are_killed_by_the_timeout_and_replaced(chaos_server):
    server = chaos_server(workers=3, args=["--timeout", "2"]).start()
    hung = []

    def hang():
        try:
            hung.append("HTTP %d" % server.request("/hang", timeout=15.0)[0])
        except OSError as exc:
            hung.append(type(exc).__name__)

    with Load(server, clients=2) as load:
        load.wait_ok(10)
        before = set(server.worker_pids())
        threads = [threading.Thread(target=hang) for _ in range(2)]
        for thread in threads:
            thread.start()
        wait_for(lambda: server.log().count("WORKER TIMEOUT") >= 2, timeout=20,
                 what="two worker timeouts\n" + server.log())
        for thread in threads:
            thread.join(15)
        settle(server, 3, what="after the timeouts")
        load.wait_ok(20)
    assert len(set(server.worker_pids()) - before) == 2
    # The hung requests are the case's expected failures (gunicorn's abort handler answers
    # 500 from inside the request); no other request failed.
    assert all(h in ("HTTP 500", "RemoteDisconnected") for h in hung) and len(hung) == 2, hung
    assert load.failures == [], load.summary()
    check_log(server, allowed=[r"WORKER TIMEOUT", r"Worker \(pid:\d+\) exited with code 1",
                               r"was sent SIGKILL", r"Error handling request GET /hang",
                               r"Traceback", r"SystemExit", r"in (hang|app|handle_abort|"
                               r"handle_request|handle|wsgi)", r"^\s"])
    finish(server)
