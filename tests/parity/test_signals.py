"""Parity of signals: plain gunicorn (`-k sync`) and smartspawn, the same outcome.

1. USR1 (logrotate) after the SIGKILL of each kind of process (worker, standby,
   preloader, template), sent at once and after the master noticed: the master lives,
   serves, and writes new access log lines to a new file at the original path; the
   master never signals the pid of a process it has already reaped.
2. TERM during each phase of a refork (URG; plain gunicorn ignores SIGURG): while the
   candidate drains a slow request, once the template is ready, while the old workers are
   replaced. The slow requests in flight complete with 200, the master exits 0 and no
   process survives; the draining candidate is never SIGKILLed.
3. TERM during each phase of a HUP: while the new code imports (slowed to ~2 s by
   tests/apps/parity_sig_slowreload.py), while the new generation replaces the old. The
   same three promises.
"""
import contextlib
import re
import signal
import socket
import threading

import psutil
import pytest

from conftest import wait_for

# fork_worker on, with a threshold no test reaches: reforks happen on URG only.
URG_ONLY = "fork_worker = 10**9\n"
LOGS = ["--error-logfile", "error.log", "--access-logfile", "access.log"]


def smart(server):
    return server.worker_class != "sync"


def eventually(predicate, timeout=10.0):
    """Like wait_for, but says whether `predicate` came true instead of failing."""
    try:
        return bool(wait_for(predicate, timeout))
    except AssertionError:
        return False


def gone(pid):
    """The process has exited and was reaped (a zombie still counts as existing)."""
    return not psutil.pid_exists(pid)


class Slow:
    """A GET /sleep?S on its own raw connection: sent now, its answer read later."""

    def __init__(self, server, seconds):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=25)
        self.sock.sendall(b"GET /sleep?%s HTTP/1.0\r\nHost: parity\r\n\r\n" % str(seconds).encode())
        self.port = self.sock.getsockname()[1]
        self.server = server

    def owner(self):
        """The pid of the process that accepted this connection (waits for the accept)."""
        def find():
            for pid, _ in self.server.children():
                try:
                    conns = psutil.Process(pid).net_connections("tcp")
                except psutil.Error:
                    continue
                if any(c.raddr and c.raddr.port == self.port for c in conns):
                    return pid
            return None
        return wait_for(find, what="a worker to accept the slow request\n" + self.server.log())

    def status(self):
        """The HTTP status, or the name of the error the connection ended with."""
        data = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            return type(exc).__name__
        finally:
            self.sock.close()
        match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return int(match.group(1)) if match else "closed without a response: %r" % data[:80]


def show_workers(server):
    return server.control("show workers")["workers"]


def oldest_worker(server):
    """The worker of the lowest age: the one smartspawn makes the template."""
    return min(show_workers(server), key=lambda w: w["age"])["pid"]


class TreeWatch:
    """Samples the master's whole process tree (recursively) from a thread until stopped;
    every pid seen is also handed to the harness's teardown check (`seen_pids`)."""

    def __init__(self, server):
        self.server, self.titles = server, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.sample()

    def sample(self):
        try:
            kids = psutil.Process(self.server.pid).children(recursive=True)
        except psutil.Error:
            return
        for kid in kids:
            try:
                self.titles[kid.pid] = " ".join(kid.cmdline()) or self.titles.get(kid.pid, "?")
            except psutil.Error:
                self.titles.setdefault(kid.pid, "?")
            self.server.seen_pids.add(kid.pid)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


@contextlib.contextmanager
def watched(server):
    """Sample the whole process tree, so the teardown checks every pid ever seen."""
    watch = TreeWatch(server)
    try:
        yield watch
    finally:
        watch.stop()


def stop_and_survivors(server, watch):
    """TERM the master: (its exit code, titles of the processes of its tree still alive)."""
    watch.sample()
    server.track()
    code = server.stop(signal.SIGTERM, timeout=30)
    watch.stop()
    survivors = server.alive(set(watch.titles) | server.seen_pids, grace=5.0)
    return code, sorted(watch.titles.get(pid, "?") for pid in survivors)


# -- 1. USR1 after a death -----------------------------------------------------------------

def read(path):
    return path.read_text(errors="replace") if path.exists() else ""


def kill_one(server, kind):
    """SIGKILL one process of `kind`; its pid, or None where there is no such process."""
    if kind == "worker":
        pid = server.worker_pids()[0]
    elif not smart(server):
        return None  # plain gunicorn has no standby, preloader or template
    else:
        pid = server.single("smartspawn %s" % kind)
    psutil.Process(pid).kill()
    return pid


@pytest.mark.parametrize("when", ["at once", "once noticed"])
@pytest.mark.parametrize("kind", ["worker", "standby", "preloader", "template"])
def test_usr1_reopens_logs_after_a_process_died(run_both, kind, when):
    """SIGKILL a worker, the standby, the preloader or the template (after a URG refork),
    then rotate the logs (rename, USR1) at once, or once the master reaped the dead
    process and is back to two workers. gunicorn: the master lives, serves, and the new
    access log lines go to a new file at the original path. smartspawn: the same, and
    the master never signals the dead process's stale pid.
    """
    def scenario(server):
        root = server.root
        server.log = lambda: read(root / "error.log.1") + read(root / "error.log") + \
            read(root / "server.log")
        server.start()
        if kind == "template":
            server.signal(signal.SIGURG)
            if smart(server):
                server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
                server.single("smartspawn template")
        for _ in range(4):
            assert server.request("/?before")[0] == 200
        wait_for(lambda: read(root / "access.log").count("GET /?before") == 4,
                 what="the access log lines before the rotation")
        victim = kill_one(server, kind)
        if victim and when == "once noticed":
            wait_for(lambda: gone(victim), what="the master to reap %s" % victim)
            wait_for(lambda: len(server.worker_pids()) == 2 and server.get_ok(),
                     what="two serving workers\n" + server.log())
            if kind == "preloader":
                wait_for(lambda: [p for p in server.preloader_pids() if p != victim],
                         what="a new preloader\n" + server.log())
        (root / "access.log").rename(root / "access.log.1")
        (root / "error.log").rename(root / "error.log.1")
        server.signal(signal.SIGUSR1)

        def logged_after():
            try:
                ok = server.request("/?after", timeout=2.0)[0] == 200
            except OSError:
                return False
            return ok and "GET /?after" in read(root / "access.log")
        rotated = eventually(logged_after)
        serves = all(server.get_ok() for _ in range(5))
        return {"rotated": rotated, "serves": serves, "master alive": server.exited() is None,
                "old file kept": read(root / "access.log.1").count("GET /?before") == 4,
                "error log reopened": (root / "error.log").exists(),
                "exit": server.stop(signal.SIGTERM)}

    plain, smartspawn = run_both(scenario, config=URG_ONLY, args=LOGS)
    assert plain == {"rotated": True, "serves": True, "master alive": True,
                     "old file kept": True, "error log reopened": True, "exit": 0}
    assert smartspawn == plain


# -- 2. TERM during a refork -----------------------------------------------------------------

def load_candidate_and_other(server, long_seconds):
    """Slow requests: a short one on the oldest worker (the refork candidate, so that it
    drains briefly), a `long_seconds` one on the other worker (so that its replacement
    lasts). Returns (the other worker's pid, the slow requests)."""
    candidate = oldest_worker(server)
    [other] = [pid for pid in server.worker_pids() if pid != candidate]
    first = Slow(server, 0.8)
    if first.owner() == candidate:
        requests = [first]
    else:
        # The other worker is busy for 0.8 s: this one lands on the candidate, and
        # outlasts the first one, which leaves the other worker free for the long one.
        requests = [first, Slow(server, 2.0)]
        assert requests[1].owner() == candidate
        assert first.status() == 200
        requests = requests[1:]
    long = Slow(server, long_seconds)
    assert long.owner() == other, "the long request went to %s, not %s" % (long.owner(), other)
    return other, requests + [long]


REFORK_PHASES = {
    # phase: what the smartspawn log says once the refork is in it
    "the candidate drains": r"Refork to generation 2 \(URG\): worker \(pid: {candidate}",
    "the template is ready": r"template \(pid: {candidate}, gen=2\) ready",
    "an old worker is replaced": r"Replacing worker \(pid: {other}\): refork",
}


@pytest.mark.parametrize("phase", list(REFORK_PHASES))
def test_term_during_a_refork_lets_slow_requests_complete(run_both, phase):
    """TERM while a URG refork is in a given phase, with slow requests in flight. While the
    candidate drains: a 3 s request on each worker (so one is on the candidate). Later
    phases: a short request on the candidate and a 4 s one on the other worker, which the
    refork replaces. gunicorn (URG ignored): every slow request completes with 200, exit
    0, no process survives. smartspawn: the same; the candidate is never SIGKILLed while
    it drains (its client gets its response)."""
    def scenario(server):
        server.start()
        with watched(server) as watch:
            candidate = oldest_worker(server)
            if phase == "the candidate drains":
                slow = [Slow(server, 3), Slow(server, 3)]
                assert {s.owner() for s in slow} == set(server.worker_pids())
                other = None
            else:
                other, slow = load_candidate_and_other(server, long_seconds=4)
            server.signal(signal.SIGURG)
            if smart(server):
                server.wait_log(REFORK_PHASES[phase].format(candidate=candidate, other=other),
                                timeout=10)
                assert "refork to generation 2 (URG) done" not in server.log()
            code, survivors = stop_and_survivors(server, watch)
        return {"slow": [s.status() for s in slow], "exit": code, "survivors": survivors}

    plain, smartspawn = run_both(scenario, config=URG_ONLY, args=["--graceful-timeout", "10"])
    assert plain == {"slow": [200] * len(plain["slow"]), "exit": 0, "survivors": []}
    assert plain["slow"]
    assert smartspawn == plain


# -- 3. TERM during a HUP --------------------------------------------------------------------

@pytest.mark.parametrize("phase", ["the new code imports", "the new generation replaces"])
def test_term_during_a_hup_lets_slow_requests_complete(run_both, phase):
    """TERM while a HUP is in a given phase, with a slow request on each worker: while the
    new code imports (made to take 2 s: smartspawn's new preloader, gunicorn's new
    workers), or once the new generation serves and replaces the old one. gunicorn: the
    slow requests complete with 200, exit 0, no process survives; smartspawn the same."""
    def scenario(server):
        server.start()
        with watched(server) as watch:
            slow = [Slow(server, 3), Slow(server, 3)]
            assert {s.owner() for s in slow} == set(server.worker_pids())
            if phase == "the new code imports":
                (server.root / "slow_import").write_text("2")
            server.signal(signal.SIGHUP)
            if not smart(server):
                # gunicorn's HUP: two new workers (importing), the old two finishing.
                wait_for(lambda: server.log().count("Booting worker") == 4,
                         what="the new workers\n" + server.log())
                if phase == "the new generation replaces":
                    wait_for(lambda: len(server.worker_pids()) == 4 and server.get_ok(),
                             what="the new workers to serve\n" + server.log())
            elif phase == "the new code imports":
                server.wait_log(r"Reload to generation 2 \(HUP\): preloader \(pid: \d+, "
                                r"gen=2\) started")
                assert "gen=2) loaded the app" not in server.log()
            else:
                server.wait_log(r"Generation 2 is ready")
            code, survivors = stop_and_survivors(server, watch)
        return {"slow": [s.status() for s in slow], "exit": code, "survivors": survivors}

    plain, smartspawn = run_both(scenario, app_file="parity_sig_slowreload.py",
                                 args=["--graceful-timeout", "10"])
    assert plain == {"slow": [200, 200], "exit": 0, "survivors": []}
    assert smartspawn == plain
