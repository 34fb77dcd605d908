"""The event-loop workers: smartspawn.ASGIWorker, smartspawn.UvicornWorker (FastAPI,
tests/apps/fastapi_lifespan.py) and smartspawn.GeventWorker (tests/apps/gevent_app.py).

Where a behaviour is gunicorn's (TERM, a lifespan that fails), the same scenario runs
under the plain worker class too, and both must end the same way.
"""
import concurrent.futures
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import LoadLoop, wait_for
from services import library

# websockets 17 asks for its sync client in a `with`; the tests close theirs by hand.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")

ASGI = [pytest.param(("smartspawn.ASGIWorker", "asgi"), id="asgi"),
        pytest.param(("smartspawn.UvicornWorker", "uvicorn_worker.UvicornWorker"),
                     id="uvicorn")]
UVICORN_H11 = pytest.param(("smartspawn.UvicornH11Worker", "uvicorn_worker.UvicornH11Worker"),
                           id="uvicorn-h11")
GEVENT = ("smartspawn.GeventWorker", "gevent")
REFORK = """
fork_worker = True
graceful_timeout = 5
"""
OOB_HOOK = '''
import os, time

def on_oob_work(worker):
    time.sleep(0.01)  # I/O: under gevent, it must not run in a callback of the hub
    with open(os.path.join(os.environ["TEST_DIR"], "work.txt"), "a") as f:
        f.write("%d\\n" % os.getpid())
'''


@pytest.fixture
def asgi_server(make_server):
    """asgi_server(classes, smart=True, **kwargs): a FastAPI server under `classes`'s
    smartspawn class (or, smart=False, the plain one)."""
    def make(classes, smart=True, **kwargs):
        library("fastapi")
        if "Uvicorn" in classes[0]:
            library("uvicorn_worker")
        return make_server("fastapi_lifespan.py", worker_class=classes[0 if smart else 1],
                           **kwargs)
    return make


@pytest.fixture
def gevent_server(make_server):
    def make(smart=True, **kwargs):
        library("gevent")
        return make_server("gevent_app.py", worker_class=GEVENT[0 if smart else 1], **kwargs)
    return make


def lifespan_events(server):
    """[(event, pid)] from the app's lifespan.txt."""
    lines = (server.root / "lifespan.txt").read_text().split("\n") \
        if (server.root / "lifespan.txt").exists() else []
    return [(event, int(pid)) for event, pid in (line.split() for line in lines if line)]


def imports(server):
    return server.lines("imports.txt")


def responses_from_every_worker(server, path="/", timeout=20.0):
    """{pid: body} from each current worker (fresh connections until all answered).

    Bounded in time, not in count: a worker busy with a long collection lets another
    take every connection for as long as the collection lasts."""
    workers = set(server.worker_pids())
    seen = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = server.get_json(path)
        seen[body["pid"]] = body
        if workers <= set(seen):
            return seen
        time.sleep(0.005)  # both workers back in accept(), not only the one that answered
    raise AssertionError("not every worker answered: %s of %s" % (sorted(seen), workers))


def refork(server):
    """URG, then wait until the refork is done; returns the template's pid."""
    done = len(re.findall(r"refork to generation \d+ \(URG\) done", server.log()))
    server.signal(signal.SIGURG)
    wait_for(lambda: len(re.findall(r"refork to generation \d+ \(URG\) done",
                                    server.log())) > done,
             timeout=40, what="the refork\n" + server.log())
    return int(re.findall(r"template \(pid: (\d+), gen=\d+\) ready", server.log())[-1])


class WebSocket:
    """A client websocket to /ws (websockets' sync client), answering with its worker."""

    def __init__(self, server):
        from websockets.sync.client import connect
        self.ws = connect("ws://127.0.0.1:%d/ws" % server.port, open_timeout=5)
        self.pid = self.echo("hello")

    def echo(self, text, timeout=5.0):
        self.ws.send(text)
        pid, echoed = self.ws.recv(timeout=timeout).split(" ", 1)
        assert echoed == text
        return int(pid)

    def close(self):
        self.ws.close()


def websockets_on_every_worker(server, count):
    """One websocket on each of `count` workers. A worker that is listed may still be
    running its lifespan startup: wait until every worker answers first."""
    responses_from_every_worker(server)
    sockets, seen = [], set()
    for _ in range(200):
        ws = WebSocket(server)
        if ws.pid in seen:
            ws.close()
            continue
        seen.add(ws.pid)
        sockets.append(ws)
        if len(sockets) == count:
            return sockets
    raise AssertionError("no websocket reached every worker")


# -- the app is imported once; the lifespan runs in every worker, on its own loop ------


@pytest.mark.parametrize("classes", [*ASGI, UVICORN_H11])
def test_asgi_app_is_imported_once_and_every_worker_runs_its_own_lifespan(asgi_server,
                                                                         classes):
    library("websockets")
    server = asgi_server(classes, config=REFORK).start()
    preloader = server.preloader_pid()
    first = responses_from_every_worker(server)
    assert imports(server) == [str(preloader)]
    assert all(body["own_loop"] for body in first.values()), first
    assert {pid for event, pid in lifespan_events(server) if event == "startup"} >= set(first)

    with LoadLoop(server) as load:
        template = refork(server)
    assert load.failures == [] and load.ok > 0
    second = responses_from_every_worker(server)
    assert not set(second) & set(first)
    assert all(body["own_loop"] for body in second.values()), second
    events = lifespan_events(server)
    # The candidate ran its lifespan shutdown before it became the template; each new
    # worker ran its own startup.
    assert ("shutdown", template) in events
    assert {("startup", pid) for pid in second} <= set(events)
    assert imports(server) == [str(preloader)]  # nothing imported it again


@pytest.mark.parametrize("classes", ASGI)
def test_asgi_hup_under_load_imports_the_new_code_once(asgi_server, classes):
    server = asgi_server(classes, config=REFORK).start()
    old = set(responses_from_every_worker(server))
    with LoadLoop(server) as load:
        server.signal(signal.SIGHUP)
        wait_for(lambda: len(imports(server)) == 2 and len(server.worker_pids()) == 2
                 and not set(server.worker_pids()) & old, timeout=30,
                 what="the workers of the new generation\n" + server.log())
        time.sleep(0.5)
    assert load.failures == []
    assert all(body["own_loop"] for body in responses_from_every_worker(server).values())


# -- websockets ---------------------------------------------------------------------------


def drains_websockets(classes):
    """gunicorn's asgi worker lets open websockets finish when it stops; uvicorn closes
    them at once with 1012 (service restart), under plain uvicorn-worker too."""
    return "Uvicorn" not in classes[0]


def assert_closed_for_a_restart(ws, timeout=5.0):
    """`ws` is closed with 1012 within `timeout` (uvicorn sees the TERM at its next tick)."""
    from websockets.exceptions import ConnectionClosed
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as closed:
        while time.monotonic() < deadline:
            ws.echo("closed?")
            time.sleep(0.05)
    assert closed.value.rcvd.code == 1012


class Echoes(threading.Thread):
    """Echoes on `ws` every 50 ms until it fails or is stopped, counting those that came
    back once the master had said it was replacing the websocket's worker."""

    def __init__(self, server, ws):
        super().__init__(daemon=True)
        self.server, self.ws = server, ws
        self.ok = 0
        self.ok_after_replacement = 0
        self.failure = None
        self.failed_before_replacement = False
        self.stopped = threading.Event()

    def replaced(self):
        return "Replacing worker (pid: %d)" % self.ws.pid in self.server.log()

    def run(self):
        while not self.stopped.wait(0.05):
            try:
                self.ws.echo("ping %d" % self.ok)
            except Exception as exc:  # noqa: BLE001 (any failure ends the echoes)
                self.failure = exc
                self.failed_before_replacement = not self.replaced()
                return
            self.ok += 1
            self.ok_after_replacement += self.replaced()


@pytest.mark.parametrize("classes", ASGI)
def test_a_websocket_on_another_worker_keeps_working_through_a_refork(asgi_server, classes):
    library("websockets")
    server = asgi_server(classes, config=REFORK).start()
    sockets = websockets_on_every_worker(server, 2)
    server.signal(signal.SIGURG)
    candidate = int(server.wait_log(r"worker \(pid: (\d+), \d+ requests\) becomes the "
                                    r"template").group(1))
    on_candidate = next(ws for ws in sockets if ws.pid == candidate)
    other = next(ws for ws in sockets if ws.pid != candidate)
    echoes = Echoes(server, other)
    echoes.start()
    if drains_websockets(classes):
        # The candidate drains: its websocket works until the client closes it.
        assert on_candidate.echo("draining") == candidate
        on_candidate.close()
    else:
        server.wait_log(r"template \(pid: %d, gen=2\) ready" % candidate, timeout=20)
        assert_closed_for_a_restart(on_candidate)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
    echoes.stopped.set()
    echoes.join(10)
    assert echoes.ok >= 3
    # Never cut while its worker served; once the refork replaced that worker, gunicorn's
    # asgi worker drained the websocket (until graceful_timeout), uvicorn closed it.
    assert not echoes.failed_before_replacement, echoes.failure
    if drains_websockets(classes):
        assert echoes.ok_after_replacement > 0
    else:
        assert echoes.failure is not None
    other.close()
    assert all(body["own_loop"] for body in responses_from_every_worker(server).values())


@pytest.mark.parametrize("smart", [True, False], ids=["smartspawn", "plain"])
@pytest.mark.parametrize("classes", ASGI)
def test_term_lets_requests_and_websockets_finish_as_the_base_class_does(asgi_server,
                                                                        classes, smart):
    library("websockets")
    server = asgi_server(classes, smart=smart, workers=1,
                         config="graceful_timeout = 10\n").start()
    ws = WebSocket(server)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(server.get_json, "/sleep?s=1.5")
        wait_for(lambda: server.lines("sleeping.txt"), what="the slow request to start")
        server.signal(signal.SIGTERM)
        time.sleep(0.3)
        if drains_websockets(classes):
            assert ws.echo("after TERM") == ws.pid
        else:
            assert_closed_for_a_restart(ws)
        assert slow.result(timeout=10)["slept"] == 1.5
    ws.close()
    # uvicorn re-raises the TERM it caught once it has shut down: the worker dies of it,
    # which gunicorn's master logs, and exits 0 all the same.
    assert server.wait_exit(timeout=15) == 0


@pytest.mark.parametrize("classes", [*ASGI, pytest.param(GEVENT, id="gevent")])
def test_max_requests_replaces_a_worker_before_it_stops(make_server, classes):
    library("gevent" if "Gevent" in classes[0] else "fastapi")
    if "Uvicorn" in classes[0]:
        library("uvicorn_worker")
    server = make_server("gevent_app.py" if "Gevent" in classes[0] else
                         "fastapi_lifespan.py", worker_class=classes[0],
                         args=["--max-requests", "15"]).start()
    first = set(server.worker_pids())
    with LoadLoop(server, path="/garbage") as load:
        wait_for(lambda: not set(server.worker_pids()) & first, timeout=40,
                 what="both workers replaced\n" + server.log())
    # uvicorn's own shutdown would reset a client accepted in its last turn of the loop.
    assert load.failures == []
    assert server.log().count("the master replaces it before it stops") >= 2


# -- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", ASGI)
def test_asgi_kills_of_a_worker_the_preloader_and_the_template(asgi_server, classes):
    server = asgi_server(classes, config=REFORK).start()
    kills = 0
    with LoadLoop(server) as load:
        refork(server)
        for title in ("worker [", "smartspawn preloader", "smartspawn template"):
            victim = server.worker_pids()[0] if title == "worker [" else server.single(title)
            os.kill(victim, signal.SIGKILL)
            kills += 1
            wait_for(lambda: len(server.worker_pids()) == 2 and server.get_ok(),
                     timeout=20, what="two workers again\n" + server.log())
        time.sleep(1.0)
    assert len(load.failures) <= kills, load.failures
    assert all(body["own_loop"] for body in responses_from_every_worker(server).values())
    assert server.stop() == 0


@pytest.mark.parametrize("smart", [True, False], ids=["smartspawn", "plain"])
def test_a_failing_lifespan_stops_gunicorn_as_under_plain_asgi(make_server, smart):
    library("fastapi")
    server = make_server("fastapi_lifespan.py", app="app:failing",
                         worker_class="smartspawn.ASGIWorker" if smart else "asgi")
    server.start(wait=False)
    # Plain gunicorn exits 1 with a HaltServer traceback when its second worker fails
    # while the first one's halt is stopping the server (its stop() reaps, and lets that
    # HaltServer out); smartspawn keeps the first exit code.
    assert server.wait_exit(timeout=30) in ((3,) if smart else (1, 3)), server.log()
    assert "ASGI lifespan startup failed" in server.log()
    assert server.log().count("Booting worker") <= 2  # no spawn loop


@pytest.mark.parametrize("classes", [*ASGI, pytest.param(GEVENT, id="gevent")])
def test_a_bad_setting_stops_startup_naming_it(make_server, classes):
    library("gevent" if "Gevent" in classes[0] else "fastapi")
    if "Uvicorn" in classes[0]:
        library("uvicorn_worker")
    server = make_server("counting.py", worker_class=classes[0], config='oob_gc = "often"\n')
    server.start(wait=False)
    assert server.wait_exit(timeout=20) == 1
    assert "oob_gc" in server.log() and "often" in server.log()
    assert "Booting worker" not in server.log()


@pytest.mark.parametrize("smart", [True, False], ids=["smartspawn", "plain"])
def test_direct_spawning_and_reload_serve_as_the_plain_class(make_server, smart):
    # --reload: every worker imports the app itself (smartspawn falls back, with a warning).
    library("fastapi")
    server = make_server("fastapi_lifespan.py", args=["--reload"],
                         worker_class="smartspawn.ASGIWorker" if smart else "asgi").start()
    assert all(body["own_loop"] for body in responses_from_every_worker(server).values())
    assert len(imports(server)) == 2  # one per worker, as under plain gunicorn
    assert server.stop() == 0


def test_uvicorn_worker_without_the_extra_names_it(make_server, tmp_path):
    blocker = tmp_path / "blocker"
    (blocker / "uvicorn_worker").mkdir(parents=True)
    (blocker / "uvicorn_worker" / "__init__.py").write_text(
        'raise ImportError("No module named \'uvicorn_worker\'")\n')
    server = make_server("counting.py", worker_class="smartspawn.UvicornWorker",
                         env={"PYTHONPATH": str(blocker)})
    server.start(wait=False)
    assert server.wait_exit(timeout=20) != 0
    assert 'pip install "gunicorn_smartspawn[uvicorn]"' in server.log()


CLOSE_THE_IMPORT_LOOP = """
fork_safety = "strict"

def on_preload(preloader):
    import app
    app.loop.run_until_complete(app.loop.shutdown_default_executor())
    app.loop.close()
"""


def test_fork_safety_names_a_loop_made_at_import_and_its_executor(make_server):
    library("fastapi")
    server = make_server("loop_at_import.py", worker_class="smartspawn.ASGIWorker",
                         config='fork_safety = "strict"\n')
    server.start(wait=False)
    assert server.wait_exit(timeout=30) == 3
    log = server.log()
    assert "asyncio (an event loop's default executor)" in log
    assert "asyncio: an event loop that is not closed" in log
    # The fix the messages name: the preloader forks, the workers serve.
    fixed = make_server("loop_at_import.py", worker_class="smartspawn.ASGIWorker",
                        config=CLOSE_THE_IMPORT_LOOP).start()
    assert fixed.get_json("/") == {"ok": True}
    assert "WARNING] fork safety" not in fixed.log()  # nothing blamed


# -- out-of-band GC and work on the loop -----------------------------------------------


def garbage_load(server, requests=150, threads=4, path="/garbage?n=3000"):
    def run(_):
        for _ in range(requests // threads):
            server.get_json(path)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))


def collections_of(server):
    return {pid: body for pid, body in responses_from_every_worker(server, "/gc").items()}


@pytest.mark.parametrize("classes", ASGI)
def test_asgi_oob_gc_collects_between_requests_only(asgi_server, classes):
    server = asgi_server(classes, config="oob_gc = True\n").start()
    garbage_load(server)
    found = collections_of(server)
    assert all(body["in_request"] == [] for body in found.values()), found
    assert sum(len(body["between"]) for body in found.values()) > 0, found


@pytest.mark.parametrize("classes", ASGI)
def test_asgi_without_oob_gc_collects_inside_requests(asgi_server, classes):
    # The test above could not fail if this app never collected while serving.
    server = asgi_server(classes).start()
    garbage_load(server)
    assert any(body["in_request"] for body in collections_of(server).values())


def assert_the_work_header_runs_the_hook(server, path):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == {"oob": True}
    assert resp.getheader("X-Smartspawn-OOB-Work") is None
    conn.close()
    wait_for(lambda: server.lines("work.txt"), what="the out-of-band work")
    assert set(map(int, server.lines("work.txt"))) <= set(server.worker_pids())


@pytest.mark.parametrize("classes", ASGI)
def test_asgi_work_header_is_stripped_and_runs_the_hook(asgi_server, classes):
    server = asgi_server(classes, config=OOB_HOOK + 'oob_work_header = '
                         '"X-Smartspawn-OOB-Work"\n').start()
    assert_the_work_header_runs_the_hook(server, "/oob?value=true")


def test_a_streaming_response_holds_the_others_briefly_at_most(asgi_server):
    # oob_gc = 1: work is due after every request, and a response streams for 6 s on the
    # worker a kept-alive connection talks to.
    server = asgi_server(ASGI[0].values[0], config="oob_gc = 1\n").start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/")
    target = json.loads(conn.getresponse().read())["pid"]
    for _ in range(200):
        stream = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        stream.request("GET", "/stream?s=6")
        streaming = stream.getresponse()
        if int(streaming.readline()) == target:
            break
        stream.close()
    else:
        raise AssertionError("no stream reached the worker %d" % target)
    slowest = 0.0
    for _ in range(8):
        started = time.monotonic()
        conn.request("GET", "/garbage?n=10")
        assert json.loads(conn.getresponse().read())["pid"] == target
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < 2.0, slowest  # held for HOLD_LIMIT (0.5 s) at most, not 6 s
    assert streaming.read().count(b".") == 60
    stream.close()
    conn.close()


@pytest.mark.parametrize("classes", [*ASGI, pytest.param(GEVENT, id="gevent")])
def test_a_refork_candidate_draining_longer_than_timeout_is_not_killed(make_server,
                                                                      classes):
    gevent = "Gevent" in classes[0]
    library("gevent" if gevent else "fastapi")
    if "Uvicorn" in classes[0]:
        library("uvicorn_worker")
    server = make_server("gevent_app.py" if gevent else "fastapi_lifespan.py",
                         worker_class=classes[0], args=["--timeout", "2"],
                         config=REFORK).start()
    workers = set(server.worker_pids())
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        # A 4 s request on each worker, whichever becomes the candidate (an event-loop
        # worker may accept many in a row: a few more until both have one).
        slow = []
        while {int(pid) for pid in server.lines("sleeping.txt")} < workers:
            assert len(slow) < 100, "no slow request reached every worker"
            slow.append(pool.submit(server.get_json, "/sleep?4" if gevent else "/sleep?s=4"))
            time.sleep(0.1)
        refork(server)
        assert all(request.result(timeout=10)["pid"] in workers for request in slow)
    assert "WORKER TIMEOUT" not in server.log()


def test_uvicorn_runs_an_asgi2_app_as_plain_uvicorn_does(make_server):
    library("uvicorn_worker")
    server = make_server("asgi2.py", worker_class="smartspawn.UvicornWorker").start()
    assert server.get_json("/")["asgi"] == 2


# -- gevent -------------------------------------------------------------------------------


def test_gevent_patches_before_the_app_is_imported_once_and_reforks(gevent_server):
    server = gevent_server(config=REFORK).start()
    preloader = server.preloader_pid()
    assert imports(server) == ["%d" % preloader, "True"]
    first = responses_from_every_worker(server)
    assert all(body["patched"] and body["cooperative"] for body in first.values()), first
    with LoadLoop(server) as load:
        refork(server)
    assert load.failures == [] and load.ok > 0
    second = responses_from_every_worker(server)
    assert not set(second) & set(first)
    assert all(body["cooperative"] for body in second.values()), second
    assert imports(server) == ["%d" % preloader, "True"]
    assert "WARNING] fork safety" not in server.log()  # what the worker closed is gone


def test_gevent_spawner_reaps_a_child_that_exits_at_once():
    # gevent's patched os.fork() starts a child watcher after the fork, and the first one
    # installs the loop's SIGCHLD handler: a child that exited before that was never seen,
    # and gevent's os.waitpid() waited for ever (under load, 1 run in 4). The spawner
    # forks its middle process with gevent's fork_gevent and reaps it with the kernel's
    # waitpid. The first fork of a fresh process, in four processes at once.
    library("gevent")
    script = """
import os, signal
from gunicorn_smartspawn.worker.gevent_worker import GeventWorker
GeventWorker.before_app_import()  # as the preloader does
from gunicorn_smartspawn.spawner.base import fork_and_waitpid
import gevent.os
fork_process, waitpid = fork_and_waitpid()
assert fork_process is gevent.os.fork_gevent, fork_process
signal.alarm(5)  # a hang ends here, with SIGALRM's status
pid = fork_process()
if pid == 0:
    os._exit(7)
assert waitpid(pid, 0) == (pid, 7 << 8)
"""
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(4)]
    try:
        codes = [proc.wait(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == [0, 0, 0, 0]


def test_gevent_spawner_puts_back_the_loops_sigchld_handler():
    # gevent's own fork started a child watcher, which installs the loop's SIGCHLD
    # handler again; the spawner's fork_gevent does not, so it does so itself after each
    # fork: a SIGCHLD set to the default since (after the app's import, as the preloader
    # does) left a gevent.subprocess wait of the app without its signal, for ever.
    library("gevent")
    script = """
import signal
from gunicorn_smartspawn.worker.gevent_worker import GeventWorker
GeventWorker.before_app_import()
import gevent.subprocess
from gunicorn_smartspawn.spawner.base import reinstall_gevent_sigchld
child = gevent.subprocess.Popen(["sleep", "0.3"])
signal.signal(signal.SIGCHLD, signal.SIG_DFL)
reinstall_gevent_sigchld()
signal.alarm(5)  # a hang ends here, with SIGALRM's status
assert child.wait() == 0
"""
    done = subprocess.run([sys.executable, "-c", script], timeout=30)
    assert done.returncode == 0, done


def test_gevent_hup_and_kills_under_load(gevent_server):
    server = gevent_server(config=REFORK).start()
    kills = 0
    with LoadLoop(server) as load:
        server.signal(signal.SIGHUP)
        wait_for(lambda: len(imports(server)) == 4, timeout=30, what="the new preloader")
        refork(server)
        for title in ("smartspawn preloader", "smartspawn template"):
            os.kill(server.single(title), signal.SIGKILL)
            kills += 1
            wait_for(lambda: len(server.worker_pids()) == 2 and server.get_ok(),
                     timeout=20, what="two workers again\n" + server.log())
        os.kill(server.worker_pids()[0], signal.SIGKILL)
        kills += 1
        wait_for(lambda: len(server.worker_pids()) == 2, timeout=20, what="a new worker")
        time.sleep(1.0)
    assert len(load.failures) <= kills, load.failures
    assert server.stop() == 0


@pytest.mark.parametrize("smart", [True, False], ids=["smartspawn", "plain"])
def test_gevent_term_lets_requests_finish_as_plain_gevent_does(gevent_server, smart):
    server = gevent_server(smart=smart, workers=1, config="graceful_timeout = 10\n").start()
    result = {}

    def slow():
        result["body"] = server.get_json("/sleep?1.5")
    thread = threading.Thread(target=slow)
    thread.start()
    wait_for(lambda: server.lines("sleeping.txt"), what="the slow request to start")
    server.signal(signal.SIGTERM)
    thread.join(10)
    assert "pid" in result.get("body", {})
    assert server.wait_exit(timeout=15) == 0


def test_gevent_oob_gc_collects_between_requests_only(gevent_server):
    server = gevent_server(config="oob_gc = True\n").start()
    garbage_load(server, path="/garbage?3000")
    found = collections_of(server)
    assert all(body["in_request"] == [] for body in found.values()), found
    assert sum(len(body["between"]) for body in found.values()) > 0, found


def test_gevent_without_oob_gc_collects_inside_requests(gevent_server):
    server = gevent_server().start()
    garbage_load(server, path="/garbage?3000")
    assert any(body["in_request"] for body in collections_of(server).values())


def test_gevent_work_header_is_stripped_and_runs_the_hook(gevent_server):
    server = gevent_server(config=OOB_HOOK + 'oob_work_header = "X-Smartspawn-OOB-Work"\n'
                           ).start()
    assert_the_work_header_runs_the_hook(server, "/oob?true")


def test_gevent_resolver_threads_are_not_blamed(make_server):
    library("gevent")
    server = make_server("gevent_resolver.py", worker_class="smartspawn.GeventWorker",
                         config='fork_safety = "strict"\n').start()
    assert "the gevent hub's thread pool" in server.log()
    assert server.get_json("/")["pid"] in server.worker_pids()
