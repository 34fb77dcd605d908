"""Run the real `gunicorn -k smartspawn.Worker` on an ephemeral loopback port.

Every server gets its own directory (app copy, config, pidfile, control socket, log),
is waited for by polling, and is torn down by pid: INT/TERM, then KILL, and the test
fails if any process of its tree outlives it.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from gunicorn_smartspawn.host.patches import CONTROL_SOCKET

if CONTROL_SOCKET:  # gunicorn 25.1 and later
    from gunicorn.ctl.client import ControlClient, ControlClientError

APPS = Path(__file__).parent / "apps"
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
# Every server a test starts gets this gc_freeze unless its config sets one: .ci/run runs
# the suites that fork the most with "immortal" (on the CPythons that support it).
GC_FREEZE = os.environ.get("SMARTSPAWN_TEST_GC_FREEZE")


def wait_for(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds.
    `what` says what was waited for; a callable is called at the failure (a log as it is
    then, not as it was when the wait began)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what() if callable(what) else what))
        time.sleep(interval)


class Server:
    def __init__(self, root, app="app:app", config="", workers=2, args=(), env=None,
                 worker_class="smartspawn.Worker", command=None):
        """`command`: what starts the server instead of `gunicorn -k worker_class`
        (tests/test_cli.py: `python -m smartspawn run`)."""
        self.root = root
        self.log_path = root / "server.log"
        self.pidfile = root / "gunicorn.pid"
        self.app = app
        config = textwrap.dedent(config)
        if GC_FREEZE and "gc_freeze" not in config:
            config += "\ngc_freeze = %r\n" % GC_FREEZE
        (root / "gunicorn.conf.py").write_text(config)
        self.worker_class = worker_class
        self.cmd = [*(command or [GUNICORN, "-k", worker_class]),
                    "-c", str(root / "gunicorn.conf.py"),
                    "--bind", "127.0.0.1:0", "--workers", str(workers),
                    "--chdir", str(root), "--pid", str(self.pidfile),
                    *(["--control-socket", str(root / "gunicorn.ctl")] if CONTROL_SOCKET
                      else []),
                    "--log-level", "debug", *args, app]
        self.env = {**os.environ, "TEST_DIR": str(root), "PYTHONDONTWRITEBYTECODE": "1",
                    **(env or {})}
        self.proc = None
        self.port = None
        self.seen_pids = set()
        self.ready_timeout = 20.0  # start(): seconds for the server to listen and serve

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, wait=True, pass_fds=()):
        """`pass_fds`: fds of the test's that gunicorn inherits, as from what started it."""
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.root, start_new_session=True,
                                     pass_fds=pass_fds)
        if wait:
            self.wait_ready(timeout=self.ready_timeout)
        return self

    def wait_ready(self, workers=None, timeout=20.0):
        match = wait_for(lambda: self.exited() is None and
                         re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log()),
                         timeout, what=lambda: "the server to listen\n" + self.log())
        self.port = int(match.group(1))
        count = workers if workers is not None else self.expected_workers()
        wait_for(lambda: len(self.worker_pids()) >= count and self.get_ok(),
                 timeout, what=lambda: "%s workers to serve\n%s" % (count, self.log()))
        return self

    def expected_workers(self):
        return int(self.cmd[self.cmd.index("--workers") + 1])

    def exited(self):
        return self.proc.poll()

    def wait_exit(self, timeout=20.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("server did not exit within %ss\n%s"
                                 % (timeout, self.log())) from None

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        """Stop the master; returns its exit code."""
        if self.proc.poll() is None:
            self.track()
            self.signal(sig)
        return self.wait_exit(timeout)

    def teardown(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.track()
            # INT is gunicorn's quick shutdown, but uvicorn-worker's workers take
            # graceful_timeout (30 s) to exit on the QUIT it sends them, smartspawn's and
            # plain alike; their TERM ends them at once.
            self.signal(signal.SIGTERM if "Uvicorn" in self.worker_class else signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()
        survivors = self.alive(self.seen_pids)
        for pid in survivors:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not survivors, "processes outlived the server: %s\n%s" % (
            survivors, self.log())

    def alive(self, pids, grace=5.0):
        """Of `pids`, those still running (not zombies) after up to `grace` seconds."""
        def running():
            out = []
            for pid in pids:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        out.append(pid)
                except psutil.NoSuchProcess:
                    pass
            return out
        deadline = time.monotonic() + grace
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
        return running()

    # -- the process tree ---------------------------------------------------------------

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def children(self):
        """[(pid, title)] of the master's live children; remembered for teardown."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        out = []
        for kid in kids:
            try:
                if kid.status() != psutil.STATUS_ZOMBIE:
                    out.append((kid.pid, " ".join(kid.cmdline())))
            except psutil.NoSuchProcess:
                pass
        self.seen_pids.update(pid for pid, _ in out)
        return out

    def track(self):
        self.children()

    def worker_pids(self):
        return sorted(pid for pid, title in self.children() if "worker [" in title)

    def standby_pids(self):
        return [pid for pid, title in self.children() if "smartspawn standby" in title]

    def preloader_pids(self):
        return sorted(pid for pid, title in self.children() if "preloader" in title)

    def preloader_pid(self):
        return self.single("smartspawn preloader")

    def single(self, title):
        """The pid of the one process titled `title`. A process just forked from it
        carries its title for a moment before taking its own: wait for one."""
        pids = wait_for(lambda: (lambda p: p if len(p) == 1 else None)(
            [pid for pid, t in self.children() if title in t]),
            what=lambda: "exactly one %r process\n%s" % (title, self.log()))
        return pids[0]

    # -- the control socket ---------------------------------------------------------------

    def control(self, command):
        """gunicorn's control socket: `command`'s answer.

        gunicorn stops its control socket's server around every fork the master makes (a
        new preloader on each HUP) and drops the connections it had: a dropped one is
        retried.
        """
        if not CONTROL_SOCKET:
            pytest.skip("this gunicorn has no control socket (25.1 and later have one)")
        for attempt in range(5):
            client = ControlClient(str(self.root / "gunicorn.ctl"), timeout=5.0)
            try:
                return client.send_command(command)
            except ControlClientError:
                if attempt == 4:
                    raise
                time.sleep(0.1)
            finally:
                client.close()

    # -- HTTP ---------------------------------------------------------------------------

    def request(self, path="/", timeout=10.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get_json(self, path="/", timeout=10.0):
        status, body = self.request(path, timeout)
        assert status == 200, (status, body)
        return json.loads(body)

    def get_ok(self):
        try:
            return self.request("/", timeout=2.0)[0] == 200
        except OSError:
            return False

    # -- files the apps and hooks write --------------------------------------------------

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lines(self, name):
        path = self.root / name
        return path.read_text().split() if path.exists() else []

    def wait_log(self, pattern, timeout=10.0):
        return wait_for(lambda: re.search(pattern, self.log()), timeout,
                        what=lambda: "%r in the log\n%s" % (pattern, self.log()))


class LoadLoop:
    """Sequential requests from a background thread, bounded in count and time."""

    def __init__(self, server, path="/", max_requests=20000, max_seconds=60.0):
        self.server, self.path = server, path
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.ok = 0
        self.failures = []
        self.bodies = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and self.ok + len(self.failures) < self.max_requests \
                and time.monotonic() < deadline:
            try:
                status, body = self.server.request(self.path, timeout=10.0)
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            if status == 200:
                self.ok += 1
                self.bodies.append(body)
            else:
                self.failures.append("HTTP %s" % status)

    def __enter__(self):
        self._thread.start()
        wait_for(lambda: self.ok > 0 or self.failures, what="the load loop's first request")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(15)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, "report_" + report.when, report)
    return report


@pytest.fixture
def make_server(tmp_path, request):
    """make_server(app_file="counting.py", config=..., workers=2, args=()) -> Server.

    `parent` defaults to the test's private tmp_path.
    """
    servers = []

    def make(app_file="counting.py", parent=tmp_path, **kwargs):
        root = parent / ("server%d" % len(servers))
        root.mkdir()
        shutil.copy(APPS / app_file, root / "app.py")
        server = Server(root, **kwargs)
        servers.append(server)
        return server

    yield make
    failed = getattr(request.node, "report_call", None)
    for server in servers:
        if failed is None or failed.failed:
            print("---- log of %s ----\n%s" % (server.root.name, server.log()))
        server.teardown()
