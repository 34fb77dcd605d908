"""Out-of-band GC and out-of-band work (oob_gc, oob_work_header, on_oob_work).

tests/apps/oob.py records every collection of a worker, and whether gunicorn's own
request handling (`handle` of the sync or gthread worker) was on a thread's stack.
"""
import collections
import concurrent.futures
import http.client
import json
import socket
import threading
import time

import pytest
import requests

from conftest import wait_for
from gunicorn_smartspawn.shared.config import validate_oob_gc

WORK_HOOK = '''
import json, os, time

def on_oob_work(worker):
    started = time.time()
    time.sleep(float(os.environ.get("WORK_SECONDS", "0")))
    with open(os.path.join(os.environ["TEST_DIR"], "work.jsonl"), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "worker_pid": worker.pid,
                            "started": started}) + "\\n")
'''


def get(server, path, timeout=10.0):
    """(status, [(header, value)], json body) over a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), json.loads(resp.read())
    finally:
        conn.close()


def collections_by_worker(server, tries=40):
    """{pid: /gc body} of the workers reached in `tries` requests (sync: any may answer)."""
    seen = {}
    for _ in range(tries):
        body = server.get_json("/gc")
        seen[body["pid"]] = body
        if set(seen) >= set(server.worker_pids()):
            break
    return seen


def works(server):
    path = server.root / "work.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_clean_log(server):
    log = server.log()
    for bad in ("Traceback", "WORKER TIMEOUT", "SIGKILL", "[ERROR]"):
        assert bad not in log, log


# -- settings (no server) ------------------------------------------------------------------

@pytest.mark.parametrize("value, meaning", [
    (True, True), (False, False), (None, False), (0, False), (1, 1), (250, 250),
])
def test_oob_gc_values(value, meaning):
    # bool is an int: True is adaptive, 1 is "after every request".
    assert validate_oob_gc(value) is meaning or validate_oob_gc(value) == meaning
    assert type(validate_oob_gc(value)) is type(meaning)


# -- where collections run -------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("oob_gc", [False, True])
def test_collections_run_between_requests_only(make_server, threads, oob_gc):
    server = make_server(app_file="oob.py", workers=2, config="oob_gc = %s\n" % oob_gc,
                         args=["--threads", str(threads)]).start()
    errors = []

    def client():
        # Kept-alive connections (gthread): requests also arrive while a worker is paused.
        with requests.Session() as session:
            for _ in range(40):
                try:
                    resp = session.get("http://127.0.0.1:%d/garbage?3000" % server.port,
                                       timeout=10)
                    if resp.status_code != 200:
                        errors.append(resp.status_code)
                except requests.RequestException as exc:
                    errors.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(max(threads, 2))]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    assert errors == []
    seen = collections_by_worker(server)
    in_request = [gen for body in seen.values() for gen in body["in_request"]]
    between = [gen for body in seen.values() for gen in body["between"]]
    if oob_gc:
        assert in_request == [], seen
        assert len(between) >= 20, seen
        assert "Out-of-band gc: generation" in server.log()
    else:
        # The same load without oob_gc: CPython collects inside requests (the app's
        # detector works).
        assert len(in_request) >= 20, seen
    assert_clean_log(server)


def test_an_application_threshold_of_zero_keeps_automatic_collection_off(make_server):
    # gc.set_threshold(0) at import: adaptive oob_gc has nothing to move, and must not
    # turn automatic collection back on (while serving, nor between requests).
    config = "oob_gc = True\ndef on_preload(preloader):\n    import gc\n    gc.set_threshold(0)\n"
    server = make_server(app_file="oob.py", workers=1, config=config).start()
    for _ in range(10):
        server.get_json("/garbage?30000")
    body = server.get_json("/gc")
    assert body["in_request"] == [] and body["between"] == [], body


def test_oob_gc_n_collects_every_n_requests(make_server):
    server = make_server(app_file="oob.py", workers=2, config="oob_gc = 4\n").start()
    served = collections.Counter()
    for _ in range(24):
        served[server.get_json("/")["pid"]] += 1
    # Each worker's /gc: its collections between requests so far, none inside one, and
    # at most one per 4 requests it finished. The count is the app's own: the readiness
    # checks and the /gc requests that reached the other worker count too. At most, not
    # exactly: a collection waits for the master's grant (one worker at a time,
    # oob_concurrency) while the worker serves on, so two can be more than 4 requests
    # apart; tests/unit/test_oob_decisions.py counts exactly.
    # A grant waits for the other worker to serve (its first heartbeat, as the server
    # starts): the first collection may come after these requests.
    for pid in served:
        body = wait_for(lambda pid=pid: (b := server.get_json("/gc"))["pid"] == pid
                        and (served[pid] < 8 or b["between"]) and b,
                        interval=0, what="worker %s to answer /gc" % pid)
        assert body["in_request"] == [], body
        finished = body["requests"] - 1
        if served[pid] >= 8:
            assert 1 <= len(body["between"]) <= finished // 4, (served, body)


def test_the_only_worker_collects_out_of_band_while_a_worker_spawned_first_serves(
        make_server):
    server = make_server(app_file="oob.py", workers=1, config="oob_gc = 4\n").start()
    (alone,) = server.worker_pids()
    # Three clients at once: when a response is sent, another client is already queued.
    # 36 requests of 500 tracked objects stay below the safety net (35 000 on 3.14.0 to
    # 3.14.4) however long the first collection waits for the worker spawned first.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: server.get_json("/garbage?250"), range(36)))
    # The grant comes once the worker spawned first serves: maybe after these requests.
    body = wait_for(lambda: (b := server.get_json("/gc"))["pid"] == alone and b["between"]
                    and b, interval=0.01, what="the first worker collecting between requests")
    assert body["in_request"] == [], body
    assert "no other worker would serve meanwhile: spawning one first" in server.log()


def test_safety_net_bounds_memory_of_a_huge_request(make_server):
    server = make_server(app_file="oob.py", workers=1, config="oob_gc = True\n").start()
    bounded = server.get_json("/big?300000", timeout=30)["growth"]
    in_request = server.get_json("/gc")["in_request"]
    unbounded = server.get_json("/big-nogc?300000", timeout=30)["growth"]
    assert in_request, "the safety net should have collected inside the huge request"
    assert unbounded > 20 * 2**20, unbounded  # 600,000 lists kept by their cycles
    assert bounded < unbounded / 4, (bounded, unbounded)
    assert_clean_log(server)


# -- out-of-band work asked for by a response header -----------------------------------------

@pytest.mark.parametrize("config, app_header", [
    ("", "X-Smartspawn-OOB-Work"),
    ("", "x-SMARTSPAWN-oob-work"),
    ('oob_work_header = "X-Do-Work"\n', "X-Do-Work"),
])
def test_work_header_is_stripped_and_runs_the_hook_in_the_worker(make_server, config,
                                                                  app_header):
    server = make_server(app_file="oob.py", workers=2, config=WORK_HOOK + config,
                         env={"OOB_HEADER": app_header}).start()
    served = []
    for path in ("/oob?true", "/oob?YES", "/oob?1", "/oob-error?True"):
        status, headers, body = get(server, path)
        assert status == (500 if "error" in path else 200)
        assert app_header.lower() not in [name.lower() for name, _ in headers]
        served.append(body["pid"])
        wait_for(lambda: len(works(server)) == len(served), what="on_oob_work after " + path)
    assert [w["pid"] for w in works(server)] == served
    assert all(w["worker_pid"] == w["pid"] for w in works(server))
    assert set(served) <= set(server.worker_pids())

    for value in ("false", "0", "please"):
        status, headers, _ = get(server, "/oob?" + value)
        assert app_header.lower() not in [name.lower() for name, _ in headers]
        server.wait_log(r"Ignored %s: '%s'" % (app_header, value))
    server.get_json("/")
    assert len(works(server)) == len(served)
    assert_clean_log(server)


def test_work_runs_after_the_connection_is_closed(make_server):
    server = make_server(app_file="oob.py", workers=2, config=WORK_HOOK,
                         env={"WORK_SECONDS": "2"}).start()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /oob?true HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # to EOF: the worker closed the connection
            data += chunk
    elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 200") and b"oob-work" not in data.lower()
    assert elapsed < 1.0, elapsed
    wait_for(lambda: works(server), what="on_oob_work")


def test_the_only_worker_serves_a_waiting_client_before_the_work(make_server):
    server = make_server(app_file="oob.py", workers=1, config=WORK_HOOK,
                         env={"WORK_SECONDS": "3"}).start()
    results = {}

    def slow_request_asking_for_work():
        results["first"] = get(server, "/slow-oob?1.0")

    first = threading.Thread(target=slow_request_asking_for_work)
    first.start()
    time.sleep(0.3)  # the only worker is busy: the next client waits in the backlog
    started = time.monotonic()
    server.get_json("/")
    waited = time.monotonic() - started
    answered_at = time.time()
    first.join(10)
    assert results["first"][0] == 200
    # Behind the work it would have waited for the rest of /slow-oob and 3 s more.
    assert waited < 2.0, "the client waited behind the out-of-band work: %.2fs" % waited
    (work,) = wait_for(lambda: works(server), what="on_oob_work")
    # Not before the client was answered (the work takes 3 s; the test may be descheduled).
    assert work["started"] >= answered_at - 1.0
    assert "no other worker would serve meanwhile: spawning one first" in server.log()


def test_work_longer_than_timeout_is_killed_like_a_request(make_server):
    server = make_server(app_file="oob.py", workers=1, config=WORK_HOOK,
                         args=["--timeout", "2"], env={"WORK_SECONDS": "30"}).start()
    (worker,) = server.worker_pids()
    get(server, "/oob?true")
    server.wait_log(r"WORKER TIMEOUT \(pid:%d\)" % worker, timeout=15)
    wait_for(lambda: server.worker_pids() not in ([], [worker]) and server.get_ok(),
             timeout=15, what="a new worker")


# -- figures -----------------------------------------------------------------------------------

def test_statsd_carries_oob_collections_and_work(make_server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))
        statsd.settimeout(0.5)
        config = WORK_HOOK + "oob_gc = True\nstatsd_host = '127.0.0.1:%d'\n" % (
            statsd.getsockname()[1])
        server = make_server(app_file="oob.py", workers=1, config=config).start()
        for _ in range(5):
            time.sleep(0.05)  # no client waiting: the only worker works out of band
            server.get_json("/garbage?3000")
        time.sleep(0.05)
        get(server, "/oob?true")
        server.get_json("/")
        received = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
                b"smartspawn.oob_gc.duration:" in received
                and b"smartspawn.oob_work.duration:" in received):
            try:
                received += statsd.recv(65536) + b"\n"
            except socket.timeout:
                pass
    lines = received.decode().splitlines()
    assert any(line.startswith("smartspawn.oob_gc.duration:") and line.endswith("|ms")
               for line in lines), lines
    assert any(line.startswith("smartspawn.oob_work.duration:") for line in lines), lines


# -- thread workers: a long request in flight -----------------------------------------------

LONG_SECONDS = 8  # how long the stream or the upload lasts


class LongStream:
    """GET /stream: its worker is known from the first line."""

    def __init__(self, server, attempt):
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.conn.request("GET", "/stream?%d" % LONG_SECONDS)
        self.response = self.conn.getresponse()
        self.pid = int(self.response.readline())

    def finish(self):
        assert self.response.read().count(b".") == LONG_SECONDS * 10
        self.conn.close()


class SlowUpload:
    """POST /upload whose body comes LONG_SECONDS after its headers; its worker is known
    from the file the app writes before it reads the body."""

    SIZE = 64 * 1024

    def __init__(self, server, attempt):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.sock.sendall(b"POST /upload?%d HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                          b"Content-Length: %d\r\n"
                          b"\r\nfirst" % (attempt, self.SIZE))
        self.pid = int(wait_for(lambda: server.lines("upload-%d" % attempt),
                                what="the upload to reach the app")[0])
        self.rest = threading.Timer(LONG_SECONDS, self.sock.sendall,
                                    (b"x" * (self.SIZE - 5),))
        self.rest.start()

    def finish(self):
        self.rest.join()
        response = self.sock.makefile("rb").read()
        assert b'"received": %d' % self.SIZE in response, response
        self.sock.close()

    def close(self):
        self.rest.cancel()
        self.sock.close()


def slowest_beside(server, long_request):
    """The slowest of 8 requests on a kept-alive connection to the worker that serves
    `long_request` (started on other connections until one reaches that worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/")
    target = json.loads(conn.getresponse().read())["pid"]
    for attempt in range(100):
        long = long_request(server, attempt)
        if long.pid == target:
            break
        getattr(long, "close", getattr(long, "conn", None) and long.conn.close)()
    else:
        raise AssertionError("no long request reached the worker %d" % target)
    slowest = 0.0
    for _ in range(8):
        started = time.monotonic()
        conn.request("GET", "/garbage?100")
        assert json.loads(conn.getresponse().read())["pid"] == target
        slowest = max(slowest, time.monotonic() - started)
    long.finish()
    conn.close()
    return slowest


@pytest.mark.parametrize("long_request", [LongStream, SlowUpload],
                         ids=["stream", "slow-upload"])
def test_a_long_request_holds_a_thread_workers_others_briefly_at_most(make_server,
                                                                     long_request):
    """gthread with out-of-band work due after every request: a long request in flight (a
    stream, a slow upload) delays the requests arriving on the worker's kept-alive
    connections by HOLD_LIMIT (0.5 s) at most, as with the event-loop workers; then they
    are served beside it, as by plain gthread."""
    args = ("--threads", "4", "--keep-alive", "60")
    plain = make_server(app_file="long_requests.py", worker_class="gthread",
                        args=args).start()
    plain_slowest = slowest_beside(plain, long_request)
    plain.teardown()
    server = make_server(app_file="long_requests.py", config="oob_gc = 1\n",
                         args=args).start()
    slowest = slowest_beside(server, long_request)
    assert plain_slowest < 2.0, plain_slowest
    assert slowest < 2.0, (slowest, plain_slowest)  # HOLD_LIMIT + margin, not 8 s
    server.wait_log(r"Out-of-band gc")  # the work did run
    assert_clean_log(server)
