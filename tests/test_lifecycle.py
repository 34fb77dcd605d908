"""The memory-aware lifecycle: spawn before retire, memory limits and reforks, the idle
preloader, fork gates (real gunicorn, real processes, real memory)."""
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import LoadLoop, wait_for

HOOKS = """
import time
def post_worker_init(worker):
    with open("events.txt", "a") as f:
        f.write("up %d %.6f\\n" % (worker.pid, time.monotonic()))
def worker_exit(server, worker):
    with open("events.txt", "a") as f:
        f.write("down %d %.6f\\n" % (worker.pid, time.monotonic()))
"""


def serving_counts(server):
    """The number of workers between boot and exit, after each event, in time order."""
    path = server.root / "events.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    events = sorted((float(t), kind) for kind, _, t in (line.split() for line in lines))
    counts, serving = [], 0
    for _, kind in events:
        serving += 1 if kind == "up" else -1
        counts.append(serving)
    return counts


def template_pid(server, generation):
    match = re.search(r"Refork to generation %d .*worker \(pid: (\d+)" % generation,
                      server.log())
    return int(match.group(1)) if match else None


def reach_every_worker(server, path):
    """GET `path` until every worker answered it (concurrent requests of 0.3 s each)."""
    workers = set(server.worker_pids())
    answered = set()
    with concurrent.futures.ThreadPoolExecutor(len(workers)) as pool:
        for _ in range(10):
            answered |= {f.result()["pid"] for f in [
                pool.submit(server.get_json, path) for _ in workers]}
            if answered >= workers:
                return
    raise AssertionError("%s reached %s only, of %s" % (path, answered, workers))


def hold_gates_in_every_worker(server, seconds):
    """A prevent_fork() block held in each worker, whichever becomes the template."""
    reach_every_worker(server, "/gate?%s" % seconds)


def oldest_worker(server):
    return min(server.worker_pids(), key=lambda pid: psutil.Process(pid).create_time())


@pytest.mark.parametrize("spawn_method", ["smart", "direct"])
def test_max_requests_replacement_serves_before_the_worker_stops(make_server, spawn_method):
    # Direct spawning with a slow import: gunicorn's own recycling would leave one worker
    # serving for the whole import.
    server = make_server("lifecycle.py", workers=2, env={"SLOW_IMPORT": "0.3"},
                         config='spawn_method = "%s"\n%s' % (spawn_method, HOOKS),
                         args=["--max-requests", "15", "--max-requests-jitter", "5"]).start()
    first = set(server.worker_pids())
    with LoadLoop(server) as load:
        wait_for(lambda: len(serving_counts(server)) >= 10 and
                 not first & set(server.worker_pids()), timeout=60,
                 what="four replacements, both first workers gone")
    assert load.failures == []
    counts = serving_counts(server)
    assert counts[:2] == [1, 2]
    assert min(counts[2:]) >= 2, counts
    assert "No replacement within" not in server.log()


def test_leaking_worker_is_replaced_at_the_memory_limit_with_zero_failed_requests(make_server):
    server = make_server("lifecycle.py", workers=2, config=(
        'max_worker_memory = "40MB"\nmemory_sample_interval = 0.2\n')).start()
    first = set(server.worker_pids())
    with LoadLoop(server, "/leak?512") as load:
        server.wait_log(r"Replacing worker \(pid: (%s)\): its private memory \(USS\) "
                        r"[\d.]+ MiB stayed above max_worker_memory 40.0 MiB for 3 samples"
                        % "|".join(map(str, first)), timeout=30)
        wait_for(lambda: first - set(server.worker_pids()), timeout=20,
                 what="a leaking worker replaced")
    assert load.failures == []
    # Both workers leak: the other one may be being replaced too.
    wait_for(lambda: len(server.worker_pids()) == 2, what="two workers again")


def test_refork_on_memory_reforks_when_workers_unshare_never_within_the_interval(make_server):
    server = make_server("lifecycle.py", workers=2, config=(
        "refork_on_memory = True\nmemory_sample_interval = 0.2\n"
        "refork_min_interval = 3\n")).start()
    with LoadLoop(server, "/leak?256") as load:
        wait_for(lambda: len(re.findall(r"Refork to generation \d+ \(memory: ", server.log()))
                 >= 2, timeout=40, what="two reforks on memory")
    assert load.failures == []
    stamps = [time.mktime(time.strptime(t, "%Y-%m-%d %H:%M:%S")) for t in re.findall(
        r"\[([\d-]+ [\d:]+) [^\]]*\] \[\d+\] \[INFO\] Refork to generation \d+ \(memory",
        server.log())]
    assert all(b - a >= 3 for a, b in zip(stamps, stamps[1:], strict=False)), stamps


def test_prevent_fork_delays_a_urg_refork_until_released(make_server):
    server = make_server("lifecycle.py", workers=2, config="fork_worker = True\n").start()
    hold_gates_in_every_worker(server, 2.5)
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
    log = server.log()
    template = template_pid(server, 2)
    assert log.index("gate released by %d" % template) < log.index("template (pid: %d" % template)


def test_prevent_fork_past_graceful_timeout_abandons_then_retries(make_server):
    server = make_server("lifecycle.py", workers=2, config="fork_worker = True\n",
                         args=["--graceful-timeout", "1"]).start()
    hold_gates_in_every_worker(server, 4)
    server.signal(signal.SIGURG)
    server.wait_log(r"will not become the template: a prevent_fork\(\) block ran for more "
                    r"than 1(\.0)?s", timeout=10)
    server.wait_log(r"Refork \(URG\) will be tried again in 1s")
    server.wait_log(r"refork to generation \d+ \(URG\) done", timeout=40)
    assert server.get_ok()


def test_a_worker_marked_no_longer_fork_safe_never_becomes_the_template(make_server):
    server = make_server("lifecycle.py", workers=2, config="fork_worker = True\n").start()
    unsafe = oldest_worker(server)
    reach_every_worker(server, "/unsafe?%d" % unsafe)
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
    assert template_pid(server, 2) not in (None, unsafe)


def test_template_whose_workers_fail_to_boot_is_abandoned(make_server):
    config = ("fork_worker = True\n"
              "def post_worker_init(worker):\n"
              "    if worker.spawned_from == 'template':\n"
              "        raise RuntimeError('no database from the template')\n")
    server = make_server("lifecycle.py", workers=2, config=config).start()
    server.signal(signal.SIGURG)
    server.wait_log(r"template \(pid: \d+, gen=2\) abandoned: 3 workers forked from it in a "
                    r"row exited before serving; spawning from the preloader", timeout=30)
    wait_for(lambda: len(server.worker_pids()) == 2, what="two workers again")
    for _ in range(10):
        assert server.request()[0] == 200
    assert "Worker failed to boot" not in server.log()  # the server did not halt


def status_json(server):
    out = subprocess.run([sys.executable, "-m", "smartspawn", "status", "--json",
                          "--pid", str(server.proc.pid)], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return json.loads(out)


def test_idle_preloader_exits_and_a_later_spawn_starts_one_on_demand(make_server):
    server = make_server("lifecycle.py", workers=2, config="preloader_idle_timeout = 1\n")
    server.start()
    server.wait_log(r"preloader \(pid: \d+, gen=1\) spawned nothing for 1.0s "
                    r"\(preloader_idle_timeout\)", timeout=10)
    wait_for(lambda: not server.preloader_pids(), what="the preloader gone")
    assert wait_for(lambda: status_json(server)["lifecycle"]["preloader_idle_exits"] == 1)
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_log(r"Starting a preloader on demand")
    wait_for(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(),
             what="the killed worker replaced")
    assert server.get_ok()


def test_idle_preloader_exits_and_the_template_spawns(make_server):
    server = make_server("lifecycle.py", workers=2,
                         config="preloader_idle_timeout = 1\nfork_worker = True\n").start()
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
    server.wait_log(r"spawned nothing for 1.0s \(preloader_idle_timeout\): stopping it to "
                    r"free its memory; the next spawn comes from the template", timeout=10)
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(),
             what="the killed worker replaced")
    assert "Starting a preloader on demand" not in server.log()
    assert server.get_ok()
