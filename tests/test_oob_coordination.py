"""Out-of-band work coordinated by the master (oob_concurrency; a worker spawned first when
the one asking is alone) and workers taken out of rotation (`worker disable|enable PID`),
with real servers of each worker class.
"""
import concurrent.futures
import json
import os
import signal
import time

import pytest

from conftest import wait_for
from services import library

# (worker class, app, extra arguments, a path that asks for work, a quick path)
SYNC = ("smartspawn.Worker", "oob.py", (), "/oob?true", "/")
GTHREAD = ("smartspawn.Worker", "oob.py", ("--threads", "4"), "/oob?true", "/")
ASGI = ("smartspawn.ASGIWorker", "fastapi_lifespan.py", (), "/oob?value=true", "/")
GEVENT = ("smartspawn.GeventWorker", "gevent_app.py", (), "/oob?true", "/gc")
CLASSES = [pytest.param(SYNC, id="sync"), pytest.param(GTHREAD, id="gthread"),
           pytest.param(ASGI, id="asgi"), pytest.param(GEVENT, id="gevent")]

WORK_HOOK = '''
import json, os, time

def on_oob_work(worker):
    def note(name):
        with open(os.path.join(os.environ["TEST_DIR"], name), "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "at": time.time()}) + "\\n")
    note("work-start.jsonl")
    time.sleep(float(os.environ.get("WORK_SECONDS", "0")))
    note("work-end.jsonl")
'''


@pytest.fixture
def server_of(make_server):
    def make(classes, workers, config="", env=None, args=()):
        worker_class, app_file, class_args, _, _ = classes
        if "ASGI" in worker_class:
            library("fastapi")
        if "Gevent" in worker_class:
            library("gevent")
        return make_server(app_file, worker_class=worker_class, workers=workers,
                           config=WORK_HOOK + config, env=env,
                           args=[*class_args, *args]).start()
    return make


def notes(server, name):
    path = server.root / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def timed_get(server, path):
    started = time.monotonic()
    body = server.get_json(path)
    return time.monotonic() - started, body["pid"]


# -- spawn first when alone ------------------------------------------------------------------

@pytest.mark.parametrize("classes", CLASSES)
def test_the_only_worker_gets_a_second_one_before_its_work(server_of, classes):
    server = server_of(classes, workers=1, env={"WORK_SECONDS": "2"})
    (alone,) = server.worker_pids()
    assert server.request(classes[3])[0] == 200
    wait_for(lambda: notes(server, "work-start.jsonl"), what="on_oob_work to start")
    # While the only worker of the configuration works for 2 s, another one answers.
    answers = [timed_get(server, classes[4]) for _ in range(5)]
    assert not notes(server, "work-end.jsonl"), "the work should still be running"
    shown = {w["pid"]: w for w in server.control("show workers")["workers"]}
    assert shown[alone]["oob"] == "working" and shown[alone]["oob_working_for"] > 0, shown
    assert all(pid != alone for _, pid in answers), answers
    assert max(seconds for seconds, _ in answers) < 0.5, answers
    assert "no other worker would serve meanwhile: spawning one first" in server.log()
    assert notes(server, "work-start.jsonl")[0]["pid"] == alone
    wait_for(lambda: notes(server, "work-end.jsonl"), what="on_oob_work to end")


def test_the_extra_worker_leaves_after_the_work(server_of, monkeypatch):
    server = server_of(SYNC, workers=1, env={"WORK_SECONDS": "0.5"})
    (alone,) = server.worker_pids()
    server.request("/oob?true")
    wait_for(lambda: notes(server, "work-end.jsonl"), what="on_oob_work to end")
    assert len(server.worker_pids()) == 2
    # EXTRA_LINGER (10 s) after the work, the extra worker is replaced away.
    wait_for(lambda: server.worker_pids() == [alone], timeout=20,
             what="the extra worker to leave")
    server.wait_log(r"the out-of-band work of worker %d is done: the worker spawned for it "
                    r"leaves" % alone)


# -- at most oob_concurrency at once --------------------------------------------------------

def most_at_once(server):
    starts = sorted((n["at"], n["pid"]) for n in notes(server, "work-start.jsonl"))
    ends = sorted((n["at"], n["pid"]) for n in notes(server, "work-end.jsonl"))
    events = sorted([(at, 1) for at, _ in starts] + [(at, -1) for at, _ in ends])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


@pytest.mark.parametrize("classes", [pytest.param(SYNC, id="sync"),
                                     pytest.param(GTHREAD, id="gthread"),
                                     pytest.param(ASGI, id="asgi")])
def test_no_more_than_oob_concurrency_workers_work_at_once(server_of, classes):
    server = server_of(classes, workers=4, config="oob_concurrency = 1\n",
                       env={"WORK_SECONDS": "0.3"})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: server.request(classes[3])[0], range(40)))
    assert statuses == [200] * 40
    wait_for(lambda: len(notes(server, "work-end.jsonl")) >= 4
             and len(notes(server, "work-end.jsonl")) == len(notes(server, "work-start.jsonl")),
             timeout=30, what="the works to end")
    time.sleep(1.0)  # any work still granted would start by now
    assert len(notes(server, "work-end.jsonl")) == len(notes(server, "work-start.jsonl"))
    assert most_at_once(server) == 1
    assert len({n["pid"] for n in notes(server, "work-start.jsonl")}) >= 2
    assert "spawning one first" not in server.log()


# -- worker disable / enable -----------------------------------------------------------------

@pytest.mark.parametrize("classes", [CLASSES[0], CLASSES[1], CLASSES[3]])
def test_a_disabled_worker_stays_alive_out_of_rotation_until_enabled(server_of, classes):
    server = server_of(classes, workers=2, args=["--timeout", "2"])
    disabled = server.worker_pids()[0]
    answer = server.control("worker disable %d" % disabled)
    assert answer["pid"] == disabled, answer
    server.wait_log(r"Worker \(pid: %d\) disabled" % disabled)
    wait_for(lambda: len(server.worker_pids()) == 3, what="a worker in its place")
    started = time.monotonic()
    pids = set()
    while time.monotonic() - started < 6.5:  # 3x timeout, idle
        pids.add(server.get_json(classes[4])["pid"])
        time.sleep(0.2)
    assert disabled not in pids and len(pids) >= 1
    shown = {w["pid"]: w for w in server.control("show workers")["workers"]}
    assert shown[disabled]["disabled"] and not any(
        w["disabled"] for pid, w in shown.items() if pid != disabled), shown
    assert disabled in server.worker_pids() and len(server.worker_pids()) == 3
    assert "WORKER TIMEOUT" not in server.log()
    # Held still, as under gdb, for twice `timeout`: the heartbeat check leaves it alone.
    os.kill(disabled, signal.SIGSTOP)
    try:
        time.sleep(4.5)
    finally:
        os.kill(disabled, signal.SIGCONT)
    assert disabled in server.worker_pids() and "WORKER TIMEOUT" not in server.log()

    server.control("worker enable %d" % disabled)
    server.wait_log(r"Worker \(pid: %d\) enabled" % disabled)
    wait_for(lambda: len(server.worker_pids()) == 2 and disabled in server.worker_pids(),
             timeout=15, what="the worker spawned in its place to leave")
    wait_for(lambda: server.get_json(classes[4])["pid"] == disabled, timeout=15,
             interval=0.05, what="the enabled worker to serve")


def test_worker_disable_names_what_it_cannot_do(server_of):
    server = server_of(ASGI, workers=1)
    with pytest.raises(Exception, match="ASGIWorker workers cannot stop accepting"):
        server.control("worker disable %d" % server.worker_pids()[0])
    with pytest.raises(Exception, match="1 is not the pid of a worker of this server"):
        server.control("worker enable 1")
    assert os.path.exists(server.root / "gunicorn.ctl")


def test_the_masters_order_signal_kills_no_process_that_is_not_a_worker(server_of):
    """SIGRTMIN+5's default action ends a process: the master, the preloader and the
    standby it forked ahead of need (whose worker has no handler yet) must ignore it."""
    import psutil
    from gunicorn_smartspawn.shared.signals import SIG_COMMAND

    server = server_of(SYNC, workers=1)
    master = psutil.Process(server.pid)

    def not_workers():
        """{title: pids}: the middle process of a standby's double fork (titled as the
        preloader) also shows for a moment, and is gone when signalled."""
        found = {}
        for process in [master, *master.children(recursive=True)]:
            try:
                title = " ".join(process.cmdline())
            except psutil.NoSuchProcess:
                continue
            for role in ("master", "preloader", "standby"):
                if role in title:
                    found.setdefault(role, []).append(process.pid)
        return found

    def settled():
        found = not_workers()
        roles = [found.get(role, []) for role in ("master", "preloader", "standby")]
        return all(len(pids) == 1 for pids in roles) and [pids[0] for pids in roles]
    # The standby is forked a little after the worker was handed over (spawner/base.py).
    others = wait_for(settled, what="the master, the preloader and its standby")
    for pid in others:
        os.kill(pid, SIG_COMMAND)
    time.sleep(0.5)
    assert all(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
               for pid in others)
    server.control("worker add 1")  # the standby becomes a worker, and reads its orders
    wait_for(lambda: len(server.worker_pids()) == 2, what="the standby to serve")
    assert server.get_ok()


def test_a_grant_a_long_request_keeps_from_beginning_goes_to_the_next_worker(server_of):
    """gthread: worker L is granted its work but a long request keeps it busy; after
    GRANT_START_LIMIT its turn goes to the other worker, whose work runs long before L's
    request ends."""
    server = server_of(GTHREAD, workers=2, config="timeout = 60\n")
    long_request = concurrent.futures.ThreadPoolExecutor(1).submit(
        server.get_json, "/sleep?10", 20)
    time.sleep(0.5)
    # L: the worker whose thread runs /sleep (the other one is idle).
    busy = wait_for(lambda: [w["pid"] for w in server.control("show workers")["workers"]
                             if w["in_flight"]], what="the long request")
    (long_pid,) = busy
    (other,) = set(server.worker_pids()) - {long_pid}

    def ask_from(pid):
        """/oob?true until `pid` answers one: it has asked for its work."""
        return wait_for(lambda: server.get_json("/oob?true")["pid"] == pid, interval=0,
                        what="worker %s to answer /oob" % pid)
    ask_from(long_pid)  # L asks; granted, it cannot begin while /sleep runs
    time.sleep(0.3)
    asked_at = time.time()
    ask_from(other)
    wait_for(lambda: any(n["pid"] == other and n["at"] > asked_at
                         for n in notes(server, "work-start.jsonl")), timeout=6,
             what="the other worker's work, asked after L's grant")
    assert not long_request.done(), "the long request should still run"
    assert long_pid not in {n["pid"] for n in notes(server, "work-start.jsonl")}
    assert long_request.result()["pid"] == long_pid
    wait_for(lambda: any(n["pid"] == long_pid for n in notes(server, "work-start.jsonl")),
             what="the long request's worker to work once it is free")


@pytest.mark.parametrize("classes", [CLASSES[1], CLASSES[3]])
def test_a_disabled_worker_closes_kept_alive_connections(server_of, classes):
    import http.client

    server = server_of(classes, workers=2, config="keepalive = 30\n")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", classes[4])
        response = conn.getresponse()
        pid = json.loads(response.read())["pid"]
        assert response.getheader("Connection", "").lower() != "close"
        server.control("worker disable %d" % pid)
        server.wait_log(r"Worker \(pid: %d\) disabled" % pid)
        time.sleep(0.5)  # the worker reads its orders
        conn.request("GET", classes[4])
        response = conn.getresponse()
        assert json.loads(response.read())["pid"] == pid
        assert response.getheader("Connection", "").lower() == "close"
    finally:
        conn.close()
    assert all(server.get_json(classes[4])["pid"] != pid for _ in range(10))


def test_ttou_stops_the_other_workers_before_a_disabled_one(server_of):
    server = server_of(SYNC, workers=2)
    disabled = server.worker_pids()[0]  # the oldest: gunicorn's TTOU would stop it first
    server.control("worker disable %d" % disabled)
    wait_for(lambda: len(server.worker_pids()) == 3, what="a worker in its place")
    assert server.control("worker disable %d" % disabled)["status"] == "already disabled"
    server.signal(signal.SIGTTOU)
    wait_for(lambda: len(server.worker_pids()) == 2, what="TTOU to stop one")
    time.sleep(0.5)
    assert disabled in server.worker_pids(), server.worker_pids()
