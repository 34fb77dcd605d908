"""Bad input: wrong settings, malformed OOB headers from the app, garbage from clients."""
import http.client
import importlib.util
import os
import random
import signal
import socket
import threading
import time

import pytest

from chaos.helpers import URG_ONLY, Load, check_log, finish, rng_for, settle
from conftest import wait_for

pytestmark = pytest.mark.chaos

# Every smartspawn setting, each with wrong types and out-of-range values:
# (the line in gunicorn.conf.py, the start of "setting=value" the error must name).
BAD_SETTINGS = [
    ('spawn_method = "bogus"', "spawn_method='bogus'"),
    ('spawn_method = ""', "spawn_method=''"),
    ("spawn_method = 3", "spawn_method=3"),
    ("spawn_method = None", "spawn_method=None"),
    ('spawn_method = ["smart"]', "spawn_method=['smart']"),
    ("gc_freeze = 1", "gc_freeze=1"),
    ("gc_freeze = 0.5", "gc_freeze=0.5"),
    ('gc_freeze = "maybe"', "gc_freeze='maybe'"),
    ('gc_freeze = "immortl"', "gc_freeze='immortl'"),
    ("gc_freeze = []", "gc_freeze=[]"),
    ('preloader_boot_timeout = "10"', "preloader_boot_timeout='10'"),
    ("preloader_boot_timeout = -1", "preloader_boot_timeout=-1"),
    ("preloader_boot_timeout = 0", "preloader_boot_timeout=0"),
    ("preloader_boot_timeout = True", "preloader_boot_timeout=True"),
    ("preloader_boot_timeout = [5]", "preloader_boot_timeout=[5]"),
    ('preloader_boot_timeout = float("-inf")', "preloader_boot_timeout=-inf"),
    ('preloader_boot_timeout = float("nan")', "preloader_boot_timeout=nan"),
    ("on_preload = 42", "on_preload=42"),
    ("on_preload = lambda: None", "on_preload=<function"),
    ("on_preload = lambda a, b: None", "on_preload=<function"),
    ('on_preload = "os.no_such_function"', "on_preload='os.no_such_function'"),
    ('on_preload = "nodots"', "on_preload='nodots'"),
    ("on_refork = 42", "on_refork=42"),
    ("on_refork = lambda: None", "on_refork=<function"),
    ('on_refork = "no_such_module_x.f"', "on_refork='no_such_module_x.f'"),
    ('pre_template_fork = "x"', "pre_template_fork='x'"),
    ("pre_template_fork = lambda a, b: None", "pre_template_fork=<function"),
    ("fork_worker = -1", "fork_worker=-1"),
    ("fork_worker = [0]", "fork_worker=[0]"),
    ("fork_worker = []", "fork_worker=[]"),
    ('fork_worker = "100"', "fork_worker='100'"),
    ("fork_worker = 1.5", "fork_worker=1.5"),
    ("fork_worker = 0.0", "fork_worker=0.0"),
    ('fork_worker = [10, "x"]', "fork_worker=[10, 'x']"),
    ("fork_worker = [True]", "fork_worker=[True]"),
    ("fork_worker = (5, -5)", "fork_worker=(5, -5)"),
    ('fork_worker = {"a": 1}', "fork_worker={'a': 1}"),
    ('fork_safety = "bogus"', "fork_safety='bogus'"),
    ("fork_safety = 1", "fork_safety=1"),
    ("fork_safety = None", "fork_safety=None"),
    ("fork_safety = True", "fork_safety=True"),
    ("oob_gc = -1", "oob_gc=-1"),
    ("oob_gc = 1.5", "oob_gc=1.5"),
    ('oob_gc = "true"', "oob_gc='true'"),
    ("oob_gc = [1]", "oob_gc=[1]"),
    ("oob_gc_generation = 3", "oob_gc_generation=3"),
    ("oob_gc_generation = -1", "oob_gc_generation=-1"),
    ('oob_gc_generation = "2"', "oob_gc_generation='2'"),
    ("oob_gc_generation = True", "oob_gc_generation=True"),
    ("oob_gc_generation = 1.0", "oob_gc_generation=1.0"),
    ('oob_work_header = "X Bad"', "oob_work_header='X Bad'"),
    ('oob_work_header = "X-Oob:"', "oob_work_header='X-Oob:'"),
    ('oob_work_header = "X-Oob\\r\\n"', "oob_work_header='X-Oob\\r\\n'"),
    ('oob_work_header = "X-Oob\\n"', "oob_work_header='X-Oob\\n'"),
    ('oob_work_header = "X-\u00e9"', "oob_work_header='X-\u00e9'"),
    ("oob_work_header = 42", "oob_work_header=42"),
    ("on_oob_work = 42", "on_oob_work=42"),
    ("on_oob_work = lambda: None", "on_oob_work=<function"),
    ('on_oob_work = "nodots"', "on_oob_work='nodots'"),
    ("memory_sample_interval = 0", "memory_sample_interval=0"),
    ('memory_sample_interval = "5"', "memory_sample_interval='5'"),
    ("memory_sample_interval = None", "memory_sample_interval=None"),
    ("refork_on_memory = 2", "refork_on_memory=2"),
    ('refork_on_memory = "sometimes"', "refork_on_memory='sometimes'"),
    ("refork_memory_growth = -0.1", "refork_memory_growth=-0.1"),
    ('refork_memory_growth = float("inf")', "refork_memory_growth=inf"),
    ("refork_memory_growth = True", "refork_memory_growth=True"),
    ("refork_min_interval = 0", "refork_min_interval=0"),
    ("refork_min_interval = [30]", "refork_min_interval=[30]"),
    ('max_worker_memory = "lots"', "max_worker_memory='lots'"),
    ('max_worker_memory = "512 parsecs"', "max_worker_memory='512 parsecs'"),
    ('max_worker_memory = "0MB"', "max_worker_memory='0MB'"),
    ("max_worker_memory = 1000", "max_worker_memory=1000"),
    ("max_worker_memory = True", "max_worker_memory=True"),
    ("max_worker_memory = -5", "max_worker_memory=-5"),
    ("preloader_idle_timeout = 0", "preloader_idle_timeout=0"),
    ('preloader_idle_timeout = "60"', "preloader_idle_timeout='60'"),
    ("preloader_idle_timeout = -1", "preloader_idle_timeout=-1"),
]


@pytest.mark.parametrize("line, named", BAD_SETTINGS, ids=[b[0] for b in BAD_SETTINGS])
def test_bad_setting_at_start_is_a_clear_error_and_nothing_starts(chaos_server, line, named):
    server = chaos_server(config=line + "\n").start(wait=False)
    assert server.wait_exit(timeout=5) == 1  # a bad value exits in ~0.3 s
    log = server.log()
    assert "Invalid value for smartspawn setting " + named in log, log
    assert "Listening at" not in log and "Started preloader" not in log, log
    assert "Booting worker" not in log, log
    assert not server.pidfile.exists()
    server.watch.stop()
    # No preloader or worker ever ran. (Other children are possible: ctypes' find_library
    # runs ldconfig, which shows the master's command line until it execs.)
    started = {pid: t for pid, t in server.watch.titles.items()
               if "smartspawn " in t or "worker [" in t}
    assert started == {}, started
    assert server.alive(server.watch.pids) == []


# One bad value per setting, given on HUP: the running config and generation keep serving.
BAD_ON_HUP = {
    "spawn_method": 'spawn_method = "bogus"',
    "gc_freeze": 'gc_freeze = "maybe"',
    "preloader_boot_timeout": 'preloader_boot_timeout = float("nan")',
    "on_preload": "on_preload = lambda: None",
    "on_refork": "on_refork = 42",
    "pre_template_fork": 'pre_template_fork = "x"',
    "fork_worker": "fork_worker = [0]",
    "fork_safety": 'fork_safety = "bogus"',
    "oob_gc": "oob_gc = -1",
    "oob_gc_generation": "oob_gc_generation = 3",
    "oob_work_header": 'oob_work_header = "X-Oob\\n"',
    "on_oob_work": "on_oob_work = lambda: None",
    "memory_sample_interval": "memory_sample_interval = 0",
    "refork_on_memory": "refork_on_memory = 2",
    "refork_memory_growth": "refork_memory_growth = -0.1",
    "refork_min_interval": "refork_min_interval = 0",
    "max_worker_memory": 'max_worker_memory = "lots"',
    "preloader_idle_timeout": "preloader_idle_timeout = -1",
}


@pytest.mark.parametrize("setting", list(BAD_ON_HUP))
def test_bad_setting_on_hup_keeps_the_running_generation(chaos_server, setting):
    server = chaos_server(workers=2).start()
    workers, preloader = server.worker_pids(), server.preloader_pid()
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        (server.root / "gunicorn.conf.py").write_text(BAD_ON_HUP[setting] + "\n")
        server.signal(signal.SIGHUP)
        server.wait_log(r"Reload failed: the configuration did not load", timeout=5)
        server.wait_log(r"Invalid value for %s: " % setting)
        load.wait_ok(10)
        assert server.worker_pids() == workers
        assert server.preloader_pid() == preloader
        settle(server, 2)
    assert "Generation 2" not in server.log()
    assert load.failures == [], load.summary()
    check_log(server, allowed=[r"Reload failed: the configuration did not load"])
    finish(server)


def oob_cases(scratch, monkeypatch):
    """The app's CASES, read by importing it (it notes its import in TEST_DIR)."""
    monkeypatch.setenv("TEST_DIR", str(scratch))
    path = os.path.join(os.path.dirname(__file__), os.pardir, "apps", "oob_malformed.py")
    spec = importlib.util.spec_from_file_location("oob_malformed_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CASES


@pytest.mark.parametrize("threads", [1, 4])
def test_malformed_oob_header_values_are_stripped_and_harmless(chaos_server, tmp_path,
                                                              monkeypatch, threads):
    server = chaos_server(app_file="oob_malformed.py", workers=2, config="oob_gc = True\n",
                          args=["--threads", str(threads)]).start()
    cases = oob_cases(tmp_path, monkeypatch)
    workers = server.worker_pids()
    leaked = []
    with Load(server, clients=1) as load:
        for _round in range(3):
            for path in ("/", "/404", "/500"):
                for index in range(len(cases)):
                    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                    try:
                        conn.request("GET", "%s?%d" % (path, index))
                        resp = conn.getresponse()
                        resp.read()
                    finally:
                        conn.close()
                    expected = {"/": 200, "/404": 404, "/500": 500}[path]
                    assert resp.status == expected, (path, index, resp.status)
                    names = [k for k, _ in resp.getheaders()
                             if k.lower() == "x-smartspawn-oob-work"]
                    if names:
                        leaked.append((path, index, names))
        load.wait_ok(10)
        settle(server, 2)
    assert load.failures == [], load.summary()
    assert server.worker_pids() == workers  # no worker crashed on a bad value
    check_log(server)
    assert leaked == [], "the OOB header reached the client: %s" % leaked[:5]
    finish(server)


# -- garbage from clients -------------------------------------------------------------------

def garbage_payloads(rng):
    """Byte strings a broken or hostile client sends, each followed by a half-close."""
    return [
        rng.randbytes(rng.randint(1, 4096)),
        b"\x00" * 512,
        b"GET / HTTP/1.1\r\n",                                      # cut before the headers end
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort",  # body cut short
        b"FOO BAR BAZ QUX\r\n\r\n",                                 # bad request line
        b"GET / HTTP/9.9\r\n\r\n",                                  # bad version
        b"GET /\r\n\r\n",                                           # HTTP/0.9
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(200)) + b"\r\n",
        b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n",             # request line too long
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, lol\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: \x00\x01\x7f\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(200),  # TLS hello
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",                         # HTTP/2 preface
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE AFTER A GOOD REQUEST\r\n\r\n",
        "GET /\u00e9\u00e8 HTTP/1.1\r\nHost: \u00fc\r\n\r\n".encode("utf-8"),
    ]


class GarbageClient:
    """Threads that open connections and send garbage; must never hang or break a worker."""

    def __init__(self, server, rng, threads=2):
        self.server, self.rng = server, rng
        self.sent = 0
        self.statuses = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        rng = random.Random(self.rng.random())
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            payload = rng.choice(garbage_payloads(rng))
            try:
                with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
                    if rng.random() < 0.3:  # dribble it in pieces
                        for i in range(0, len(payload), 7):
                            s.sendall(payload[i:i + 7])
                            if i > 40:
                                break
                        time.sleep(rng.uniform(0, 0.05))
                    else:
                        s.sendall(payload)
                    if rng.random() < 0.8:
                        s.shutdown(socket.SHUT_WR)
                        reply = s.recv(64)
                        status = reply[:12].decode("latin-1") or "closed"
                    else:
                        status = "abandoned"  # closed without waiting for an answer
            except OSError as exc:
                status = type(exc).__name__
            self.sent += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        assert not any(t.is_alive() for t in self._threads), "a garbage client hung"


def test_client_garbage_before_and_during_a_refork(chaos_server, request):
    rng = rng_for(request)
    server = chaos_server(workers=3, config=URG_ONLY).start()
    workers = set(server.worker_pids())
    with Load(server, clients=2) as load, GarbageClient(server, rng) as garbage:
        wait_for(lambda: garbage.sent > 100, timeout=20, what="garbage before the refork")
        load.wait_ok(20)
        # Garbage did not kill or hang any worker.
        assert set(server.worker_pids()) == workers
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation 2 \(URG\) done", timeout=30)
        sent = garbage.sent
        wait_for(lambda: garbage.sent > sent + 100, timeout=20, what="garbage after it")
        settle(server, 3, what="after the refork under garbage")
        load.wait_ok(20)
    print("garbage replies:", garbage.statuses)
    assert load.failures == [], load.summary()
    assert not set(server.worker_pids()) & workers  # all replaced by the refork
    check_log(server)
    finish(server)
