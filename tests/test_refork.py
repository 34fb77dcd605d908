"""fork_worker: refork every worker from a warmed worker (the template)."""
import collections
import concurrent.futures
import json
import os
import re
import signal
import time

import pytest

from conftest import LoadLoop, wait_for
from gunicorn_smartspawn.forksafety import immortal
from gunicorn_smartspawn.master.refork import LONG_REQUEST

POST_FORK = '''
import json, os
def post_fork(server, worker):
    with open(os.path.join(os.environ["TEST_DIR"], "post_fork.jsonl"), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "from": worker.spawned_from,
                            "spawner": worker.spawner_pid, "gen": worker.generation}) + "\\n")
'''


def titles(server):
    return {pid: title for pid, title in server.children()}


def template_pids(server):
    return [pid for pid, title in server.children() if "smartspawn template" in title]


def generations(server):
    return sorted(int(re.search(r"gen=(\d+)", t).group(1))
                  for t in titles(server).values() if "worker [" in t)


def post_forks(server):
    path = server.root / "post_fork.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def hammer(server, path, until, what, seconds=30.0):
    """Send requests until `until()` holds (bounded in time, not in count: a fast client
    can send thousands before a loaded machine's master has made its template)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        server.request(path)
        if until():
            return
    raise AssertionError("%s did not happen within %.0f s of requests\n%s"
                         % (what, seconds, server.log()))


def refork_done(server, generation):
    return re.search(r"refork to generation %d .* done" % generation, server.log())


def test_auto_refork_shares_the_warmed_cache(make_server):
    server = make_server(workers=3, config="fork_worker = 20\n" + POST_FORK).start()
    preloader = server.preloader_pid()
    hammer(server, "/cache", lambda: refork_done(server, 2), "a refork")
    template = server.single("smartspawn template")
    assert generations(server) == [2, 2, 2]
    # The cache worker-0 built while serving is in every new worker, not rebuilt.
    built_by = {server.get_json("/cache")["cache_built_by"] for _ in range(15)}
    assert built_by == {template}
    assert server.lines("imports.txt") == [str(preloader)]
    gen2 = [p for p in post_forks(server) if p["gen"] == 2]
    assert len(gen2) == 3
    assert all(p["from"] == "template" and p["spawner"] == template for p in gen2)
    # 3 + the stand-in spawned before the candidate left service + 3 from the template.
    assert len(post_forks(server)) == 7
    # Later spawns come from the template too.
    os.kill(server.worker_pids()[0], signal.SIGKILL)
    wait_for(lambda: len(post_forks(server)) == 8 and len(server.worker_pids()) == 3,
             what="a replacement worker")
    assert post_forks(server)[-1]["from"] == "template"
    assert server.stop() == 0


def test_threshold_list_reforks_in_turn_then_stops(make_server):
    server = make_server(workers=2, config="fork_worker = [10, 20]\n")
    server.start()
    hammer(server, "/", lambda: refork_done(server, 2), "the first refork")
    hammer(server, "/", lambda: refork_done(server, 3), "the second refork")
    for _ in range(150):
        assert server.request()[0] == 200
    assert "generation 4" not in server.log()
    assert generations(server) == [3, 3]


def test_urg_reforks_under_load_with_zero_failed_requests(make_server):
    server = make_server(workers=3, config="fork_worker = True\n").start()
    old = set(server.worker_pids())
    with LoadLoop(server) as load:
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
        before = load.ok
        wait_for(lambda: load.ok > before + 20, what="traffic after the refork")
    assert load.failures == []
    assert not old & set(server.worker_pids())
    assert len(server.worker_pids()) == 3 and server.single("smartspawn template")


def test_urg_with_fork_worker_off_is_harmless(make_server):
    server = make_server(workers=2).start()
    workers = server.worker_pids()
    server.signal(signal.SIGURG)
    server.wait_log(r"URG ignored: fork_worker is off")
    assert server.worker_pids() == workers
    assert server.get_ok()


def test_urg_storm_runs_one_refork_at_a_time(make_server):
    server = make_server(workers=3, config="fork_worker = True\n").start()
    for _ in range(10):
        server.signal(signal.SIGURG)
    first_done = server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
    # Signals of one kind coalesce in the kernel; at most one more was queued meanwhile,
    # and it may only start after the first refork is done.
    second = re.search(r"Refork to generation 3", server.log())
    if second:
        assert second.start() > first_done.start()
        server.wait_log(r"refork to generation 3 \(URG\) done", timeout=20)
    assert "generation 4" not in server.log()
    wait_for(lambda: len(server.worker_pids()) == 3, what="3 workers")
    assert server.get_ok()


def test_a_coalesced_refork_starts_in_the_turn_the_previous_one_ends(make_server):
    # The control socket answers from its own thread: sampled every few ms, the master
    # must never be seen idle with a refork still pending (a test or an operator takes
    # that for "settled"), nor between the end of one refork and the start of the next
    # within a turn: the coalesced refork starts in the turn the previous one ends.
    # Workers that take 0.2 s to boot keep the first refork going (and the second one
    # pending) long enough for the polls below to see it, even on a loaded machine.
    server = make_server(workers=3, config="fork_worker = True\n"
                         "def post_fork(server, worker):\n"
                         "    import time; time.sleep(0.2)\n").start()
    server.signal(signal.SIGURG)
    wait_for(lambda: server.control("show stats")["refork_in_progress"], what="a refork")
    server.signal(signal.SIGURG)
    wait_for(lambda: server.control("show stats")["refork_pending"], what="one pending")
    samples, deadline = [], time.monotonic() + 20
    while not samples or samples[-1]["reforks"] < 2:
        samples.append(server.control("show stats"))
        assert time.monotonic() < deadline, samples[-1]
    idle_while_pending = [s for s in samples
                          if s["refork_pending"] and not s["refork_in_progress"]]
    assert idle_while_pending == [], idle_while_pending[:3]


def test_template_killed_mid_refork_recovers(make_server):
    server = make_server(workers=3, config="fork_worker = True\n").start()
    server.signal(signal.SIGURG)
    server.wait_log(r"template \(pid: \d+, gen=2\) ready")
    os.kill(server.single("smartspawn template"), signal.SIGKILL)
    server.wait_log(r"template \(pid: \d+, gen=2\) exited; spawning from the preloader")
    wait_for(lambda: len(server.worker_pids()) == 3, timeout=20, what="3 workers again")
    for _ in range(10):
        assert server.request()[0] == 200
    # A new refork is possible afterwards.
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 3 \(URG\) done", timeout=20)


def standby_generations(server):
    return sorted(int(re.search(r"gen=(\d+)", title).group(1))
                  for title in titles(server).values() if "smartspawn standby" in title)


def test_the_preloader_keeps_no_standby_while_a_template_spawns(make_server):
    server = make_server(workers=2, config="fork_worker = True\n").start()
    wait_for(lambda: standby_generations(server) == [1], what="the preloader's standby")
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
    server.wait_log(r"preloader \(pid: \d+, gen=1\): its standby \(pid: \d+\) stopped "
                    r"while template \(pid: \d+, gen=2\) spawns")
    wait_for(lambda: standby_generations(server) == [2], what="the template's standby alone")
    time.sleep(0.5)  # once: not forked and stopped again and again
    assert standby_generations(server) == [2]
    log = server.log()
    assert len(re.findall(r"its standby \(pid: \d+\) stopped while", log)) == 1, log
    assert re.search(r"\[DEBUG\] standby \(pid: \d+, gen=1\) was sent SIGTERM", log), log
    assert "[ERROR]" not in log
    os.kill(server.single("smartspawn template"), signal.SIGKILL)
    server.wait_log(r"template \(pid: \d+, gen=2\) exited; spawning from the preloader")
    os.kill(server.worker_pids()[0], signal.SIGTERM)
    # Its replacement forked on demand, then the preloader's standby again.
    wait_for(lambda: len(server.worker_pids()) == 2 and standby_generations(server) == [1],
             timeout=20, what="a worker and a standby from the preloader")
    assert server.get_ok()


def test_threaded_template_lets_in_flight_requests_finish(make_server):
    server = make_server(workers=2, config="fork_worker = True\n",
                         args=["--threads", "4"]).start()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        slow = [pool.submit(server.request, "/sleep?1.0", 10) for _ in range(6)]
        wait_for(lambda: server.log().count("GET /sleep") >= 1, what="requests in flight")
        server.signal(signal.SIGURG)
        assert [f.result()[0] for f in slow] == [200] * 6
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
    assert server.get_ok()


def test_hup_after_refork_starts_over_from_a_new_preloader(make_server):
    server = make_server(workers=2, config="fork_worker = True\n").start()
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
    template = server.single("smartspawn template")
    server.signal(signal.SIGHUP)
    server.wait_log(r"Generation 3 is ready")
    wait_for(lambda: generations(server) == [3, 3] and not template_pids(server),
             timeout=20, what="generation 3 from the new preloader")
    assert server.alive([template]) == []


def test_one_worker_warns_and_never_reforks(make_server):
    server = make_server(workers=1, config="fork_worker = 5\n").start()
    server.wait_log(r"a refork needs two or more workers")
    for _ in range(20):
        assert server.request()[0] == 200
    server.signal(signal.SIGURG)
    server.wait_log(r"Refork \(URG\) skipped: needs two or more workers")
    assert "Refork to generation" not in server.log()


def test_direct_spawning_reforks_from_a_worker_that_imported_the_app(make_server):
    server = make_server(workers=2, config='spawn_method = "direct"\nfork_worker = True\n'
                         + POST_FORK).start()
    hammer(server, "/cache", lambda: len({server.get_json("/cache")["cache_built_by"]
                                          for _ in range(6)}) == 2, "two caches")
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
    template = server.single("smartspawn template")
    assert {server.get_json("/cache")["cache_built_by"] for _ in range(10)} == {template}
    assert {p["from"] for p in post_forks(server) if p["gen"] == 2} == {"template"}
    # Each direct worker imported it once: the two first, and the refork's stand-in.
    assert len(server.lines("imports.txt")) == 3


def test_direct_spawning_hup_starts_no_refork_from_the_old_workers(make_server):
    """gunicorn's HUP (direct spawning) calls manage_workers while the old workers still
    run, past a threshold that starts over: no refork may start from one of them (it would
    be an old-code template, and gunicorn's reload would wait graceful_timeout for it)."""
    server = make_server(workers=2, config='spawn_method = "direct"\nfork_worker = 30\n')
    server.start()
    # Concurrent requests: sequential ones may all reach the worker that is not worker-0.
    deadline = time.monotonic() + 30  # in time: the refork may take longer than requests
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        while not refork_done(server, 2):
            assert time.monotonic() < deadline, "the first refork did not happen\n" + server.log()
            list(pool.map(lambda _: server.request("/"), range(8)))
    wait_for(lambda: len(server.worker_pids()) == 2, what="the new generation")
    old = set(server.worker_pids())
    served = collections.Counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        while min(served[pid] for pid in old) < 40 and sum(served.values()) < 3000:
            for body in pool.map(lambda _: server.get_json(), range(8)):
                served[body["pid"]] += 1  # past the threshold (30), which starts over
    hup_at = len(server.log())
    server.signal(signal.SIGHUP)
    wait_for(lambda: not old & set(server.worker_pids()) and len(server.worker_pids()) == 2,
             timeout=10, what="the new workers alone (not graceful_timeout later)")
    server.signal(signal.SIGTTIN)  # the master's loop is free again
    wait_for(lambda: len(server.worker_pids()) == 3, timeout=10, what="a third worker")
    assert "Refork to generation" not in server.log()[hup_at:], server.log()[hup_at:]
    assert server.stop() == 0


def test_direct_spawning_hup_after_refork_loads_new_code(make_server):
    server = make_server(workers=2, config='spawn_method = "direct"\nfork_worker = True\n')
    server.start()
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
    app_py = server.root / "app.py"
    app_py.write_text(app_py.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
    server.signal(signal.SIGHUP)
    wait_for(lambda: {server.get_json()["version"] for _ in range(8)} == {"v2"},
             timeout=40, what="v2 from every worker")
    assert not template_pids(server)


def test_strict_fork_safety_refusal_uses_up_the_threshold(make_server):
    config = ('fork_worker = [5]\nfork_safety = "strict"\n'
              "def post_worker_init(worker):\n"
              "    import threading, time\n"
              "    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n")
    server = make_server(workers=2, config=config).start()
    # Requests spread unevenly over the two workers: send until the oldest has served 5.
    hammer(server, "/", lambda: "gave up: fork_safety" in server.log(), "the template's refusal")
    server.wait_log(r"the template \(pid: \d+\) gave up: fork_safety = 'strict'")
    wait_for(lambda: len(server.worker_pids()) == 2, what="2 workers")
    for _ in range(60):
        assert server.request()[0] == 200
    assert server.log().count("becomes the template") == 1


# -- long requests, hooks and slow passes during a refork ---------------------------------

LONG = 14  # seconds: past a promotion's deadline (graceful_timeout + 10), within timeout
LONG_LIMITS = "graceful_timeout = 1\ntimeout = 30\n"


def long_requests(pool, server, path, count):
    """Start `count` long requests on `server`; returns their futures once all began."""
    futures = [pool.submit(server.request, path, LONG + 30) for _ in range(count)]
    wait_for(lambda: len(server.lines("started.txt")) >= count, timeout=15,
             what="%d long requests in flight\n%s" % (count, server.log()))
    return futures


def test_a_refork_never_kills_a_long_request_on_its_candidate(make_server):
    """Every worker in a request longer than graceful_timeout + 10, within `timeout`: the
    candidate is not told while it serves one, the refork is abandoned at its deadline,
    nothing is killed, every request finishes, the candidate keeps serving (its stand-in
    leaves), and a later refork works. Plain gunicorn -k sync lets the same requests
    finish across a HUP."""
    smart = make_server(app_file="refork_long_requests.py",
                        config="fork_worker = True\n" + LONG_LIMITS).start()
    plain = make_server(app_file="refork_long_requests.py", config=LONG_LIMITS,
                        worker_class="sync").start()
    workers = smart.worker_pids()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        on_smart = long_requests(pool, smart, "/sleep?%d" % LONG, 2)
        on_plain = long_requests(pool, plain, "/sleep?%d" % LONG, 2)
        began = time.monotonic()
        # What the master calls a long request (one that began just now may be short).
        wait_for(lambda: time.monotonic() - began > LONG_REQUEST + 0.5, what="long requests")
        smart.signal(signal.SIGURG)
        plain.signal(signal.SIGHUP)
        abandoned = smart.wait_log(r"abandoned: the chosen worker \(pid: (\d+)\) has been "
                                   r"serving a request for \d+s", timeout=LONG + 10)
        assert not all(f.done() for f in on_smart)  # abandoned while they still ran
        assert [f.result()[0] for f in on_plain] == [200, 200]
        smart_bodies = [json.loads(f.result()[1]) for f in on_smart]
    assert int(abandoned.group(1)) in {body["pid"] for body in smart_bodies}
    # The candidate, never told, keeps serving; the stand-in spawned for it leaves.
    wait_for(lambda: smart.worker_pids() == workers, what="the workers from before")
    log = smart.log()
    assert "killing it" not in log and "SIGKILL" not in log and "WORKER TIMEOUT" not in log
    assert "Refork to generation 2" in log
    smart.signal(signal.SIGURG)
    smart.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
    assert smart.get_ok()


def test_a_refork_prefers_a_worker_that_is_not_streaming_a_long_response(make_server):
    """Two of three workers stream a response for longer than the promotion's deadline:
    the idle one becomes the template; the streams finish whole (the busy workers are
    replaced gracefully), and nothing is killed."""
    server = make_server(app_file="refork_long_requests.py", workers=3,
                         config="fork_worker = True\n" + LONG_LIMITS).start()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        streams = long_requests(pool, server, "/stream?%d" % LONG, 2)
        server.signal(signal.SIGURG)
        server.wait_log(r"template \(pid: \d+, gen=2\) ready", timeout=20)
        template = server.single("smartspawn template")
        results = [f.result() for f in streams]
    assert [status for status, _body in results] == [200, 200]
    streamers = {json.loads(body.strip())["pid"] for _status, body in results}
    assert template not in streamers
    assert {int(pid) for pid in server.lines("started.txt")} == streamers
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
    log = server.log()
    assert "killing it" not in log and "SIGKILL" not in log and "abandoned" not in log


def test_an_on_refork_hook_that_raises_abandons_that_refork_and_the_server_serves(make_server):
    """The exception is logged with its traceback, that refork is abandoned, the master
    and its workers serve on; the next attempt waits (a threshold is not used up)."""
    config = ("fork_worker = [5]\n"
              "def on_refork(server):\n"
              "    raise RuntimeError('on_refork failed')\n")
    server = make_server(workers=2, config=config).start()
    workers = server.worker_pids()
    hammer(server, "/", lambda: "abandoned: on_refork raised" in server.log(), "the failure")
    first = server.wait_log(r"Exception in on_refork hook\nTraceback[\s\S]*?"
                            r"RuntimeError: on_refork failed")
    server.wait_log(r"abandoned: on_refork raised RuntimeError\('on_refork failed'\); "
                    r"no refork for 1s")
    for _ in range(20):
        assert server.request()[0] == 200
    server.signal(signal.SIGURG)
    wait_for(lambda: server.log().count("Exception in on_refork hook") >= 2,
             what="a second attempt")
    assert server.exited() is None and server.worker_pids() == workers
    assert "Refork to generation" not in server.log()[first.start():]
    assert server.stop() == 0


def test_an_on_refork_hook_that_fails_once_lets_a_later_refork_through(make_server):
    """A hook that fails at its first call (a service it reports to is down): after the
    wait, the threshold starts the refork again, and it completes."""
    config = ("import os\nfork_worker = [5]\n"
              "def on_refork(server):\n"
              "    marker = os.path.join(os.environ['TEST_DIR'], 'on_refork_called')\n"
              "    if not os.path.exists(marker):\n"
              "        open(marker, 'w').close()\n"
              "        raise OSError('reporting service unavailable')\n")
    server = make_server(workers=2, config=config).start()
    hammer(server, "/", lambda: refork_done(server, 2), "a refork after the failed one")
    log = server.log()
    assert log.count("Exception in on_refork hook") == 1
    assert log.index("abandoned: on_refork raised OSError") < log.index("Refork to generation 2")
    assert generations(server) == [2, 2]



# Objects of the app's heap (refork_long_requests.py): the template's immortal pass goes through
# them again, which takes longer than BIG_HEAP_TIMEOUT here (it logs how long; asserted).
BIG_HEAP = 10_000_000
BIG_HEAP_TIMEOUT = 2


@pytest.mark.skipif(immortal.unsupported() is not None, reason=str(immortal.unsupported()))
def test_a_templates_immortal_pass_longer_than_timeout_keeps_its_heartbeat(make_server):
    """gc_freeze = "immortal" + fork_worker on a heap whose pass outlasts `timeout` (one
    big list of floats, and millions of small lists the collector tracks): the candidate
    is a worker until ready, and its heartbeat goes on through the pass: no WORKER
    TIMEOUT, the refork completes. Plain gunicorn -k sync serves the same app with the
    same `timeout` without a timeout."""
    limits = "timeout = %d\ngraceful_timeout = 1\n" % BIG_HEAP_TIMEOUT
    env = {"BIG_HEAP": str(BIG_HEAP)}
    smart = make_server(app_file="refork_long_requests.py", env=env,
                        config='gc_freeze = "immortal"\nfork_worker = True\n' + limits)
    plain = make_server(app_file="refork_long_requests.py", env=env, config=limits,
                        worker_class="sync")
    smart.start(wait=False)
    plain.start(wait=False)
    smart.wait_ready(timeout=60)
    plain.wait_ready(timeout=60)
    smart.signal(signal.SIGURG)
    smart.wait_log(r"refork to generation 2 \(URG\) done", timeout=60)
    seconds = float(smart.wait_log(r"template \(pid: \d+, gen=2\) made \d+ objects "
                                   r"immortal in ([\d.]+)s").group(1))
    assert seconds > BIG_HEAP_TIMEOUT, "the pass must outlast timeout to show anything"
    assert smart.get_ok() and plain.get_ok()
    for server in (smart, plain):
        assert "WORKER TIMEOUT" not in server.log()
    assert "abandoned" not in smart.log()


def log_seconds(line):
    """The time of a gunicorn log line, in seconds (its resolution). Searched, not
    matched: a worker's stacks (WORKER TIMEOUT) are written in pieces, and the master's
    line can begin in the middle of one of theirs."""
    stamp = re.search(r"\[(\d+-\d+-\d+ \d+:\d+:\d+) [+-]\d{4}\] \[\d+\]", line).group(1)
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))


def test_a_candidate_timed_out_in_its_preparation_is_not_replaced_by_another_at_once(
        make_server):
    """A preparation longer than `timeout` (here a slow pre_template_fork) gets the
    candidate killed as WORKER TIMEOUT, as gunicorn kills any worker past it; the refork
    is abandoned and each next attempt waits longer (1 s, then 2 s, ...) instead of
    starting at once on the next worker past the threshold."""
    config = ("fork_worker = [3]\ntimeout = 2\ngraceful_timeout = 1\n"
              "def pre_template_fork(worker):\n"
              "    import time\n"
              "    time.sleep(30)\n")
    server = make_server(workers=2, config=config).start()
    with LoadLoop(server):
        server.wait_log(r"abandoned: [^\n]*; no refork for 2s\n(.*\n)*.*Refork to generation",
                        timeout=40)
    lines = server.log().splitlines()
    waited = next(i for i, line in enumerate(lines) if "no refork for 2s" in line)
    retried = next(i for i in range(waited, len(lines)) if "Refork to generation" in lines[i])
    assert log_seconds(lines[retried]) - log_seconds(lines[waited]) >= 2
    assert "WORKER TIMEOUT" in server.log() and server.get_ok()
