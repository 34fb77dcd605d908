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
from unit.bad_settings import BAD_ON_HUP, BAD_SETTINGS

pytestmark = pytest.mark.chaos

# Every bad value of every setting is checked in-process (tests/unit/test_settings.py, both
# at start and on HUP); here real servers prove the whole path for one case per kind of
# failure: (the line in gunicorn.conf.py, the start of "setting=value" the error names).
AT_START = {
    "a wrong type": 'fork_worker = "100"',
    "an out-of-range number": "preloader_boot_timeout = -1",
    "a bad choice": 'spawn_method = "bogus"',
    "a bad hook": "on_preload = lambda: None",
}
BAD_AT_START = [case for case in BAD_SETTINGS if case[0] in AT_START.values()]
assert len(BAD_AT_START) == len(AT_START)


@pytest.mark.parametrize("line, named", BAD_AT_START, ids=list(AT_START))
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


RELOAD_FAILED = "Reload failed: the configuration did not load"


def test_bad_settings_on_hup_keep_the_running_generation(chaos_server):
    """One server takes a bad value of every setting (BAD_ON_HUP), one HUP after another:
    each is refused naming the setting, and the running config and generation serve on."""
    server = chaos_server(workers=2).start()
    workers, preloader = server.worker_pids(), server.preloader_pid()
    config = server.root / "gunicorn.conf.py"
    with Load(server, clients=2) as load:
        load.wait_ok(10)
        for hups, (setting, line) in enumerate(BAD_ON_HUP.items(), 1):
            seen = len(server.log())
            config.write_text(line + "\n")
            server.signal(signal.SIGHUP)
            wait_for(lambda n=hups: server.log().count(RELOAD_FAILED) == n, timeout=5,
                     what="reload %d (%s) to fail\n%s" % (hups, line, server.log()[seen:]))
            assert "Invalid value for %s: " % setting in server.log()[seen:], \
                server.log()[seen:]
            load.wait_ok(5)
            assert server.worker_pids() == workers, setting
            assert server.preloader_pid() == preloader, setting
        settle(server, 2)
    assert server.log().count(RELOAD_FAILED) == len(BAD_ON_HUP)
    assert "Generation 2" not in server.log()
    assert load.failures == [], load.summary()
    check_log(server, allowed=[RELOAD_FAILED])
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
