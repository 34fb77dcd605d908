"""What every chaos case is made of: load, faults, a watch on the tree, and the checks.

- `Load`: a bounded load loop (a few client threads, one connection per request) that
  counts each failure by kind and remembers when it started and ended, so a failure can be
  matched against the moment a worker was killed.
- `Injector`: runs a fault (kill a random worker, send a signal) every N ms, bounded in
  count and time, and records when each one happened.
- `TreeWatch`: samples the master's whole process tree (recursively) in the background,
  so no pid escapes the survivors check, and notices zombies a live master leaves unreaped.
- `settle()`: the server is back to the configured worker count (the master's table, its
  target and the process tree agree) and serves; `finish()`: stop it and check that no
  process of the tree remains.
"""
import collections
import http.client
import json
import os
import random
import re
import signal
import socket
import threading
import time

import psutil

from conftest import wait_for

# fork_worker on, with a threshold the load never reaches: reforks happen on URG only.
URG_ONLY = "fork_worker = 10**9\n"

Failure = collections.namedtuple("Failure", "kind detail start end")


def classify(exc):
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "disconnected"  # the peer closed without a response (e.g. killed mid-request)
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    return type(exc).__name__


class Load:
    """`clients` threads sending GET `path`, each request on a new connection.

    Bounded: stops after `max_seconds` or `max_requests`, and on exit. `ok` counts the 200s;
    `failures` holds a Failure for everything else; `pids` counts responses per worker pid
    (from the counting app's JSON body).
    """

    def __init__(self, server, path="/", clients=2, max_seconds=60.0, max_requests=50000,
                 timeout=10.0):
        self.server, self.path, self.timeout = server, path, timeout
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.ok = 0
        self.failures = []
        self.pids = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True, name="load-%d" % i)
                         for i in range(clients)]

    @property
    def total(self):
        return self.ok + len(self.failures)

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline \
                and self.total < self.max_requests:
            start = time.monotonic()
            try:
                status, body = self.server.request(self.path, timeout=self.timeout)
            except Exception as exc:  # noqa: BLE001 -- every failure is counted, by kind
                self._fail(classify(exc), repr(exc), start)
                continue
            if status != 200:
                self._fail("http-%d" % status, body[:200], start)
                continue
            with self._lock:
                self.ok += 1
                try:
                    self.pids[json.loads(body)["pid"]] += 1
                except (ValueError, KeyError, TypeError):
                    pass

    def _fail(self, kind, detail, start):
        with self._lock:
            self.failures.append(Failure(kind, detail, start, time.monotonic()))

    def wait_ok(self, more, timeout=15.0):
        """Wait until `more` further requests succeeded (traffic really flows)."""
        target = self.ok + more
        wait_for(lambda: self.ok >= target, timeout, what="%d more successful requests "
                 "(ok=%d, failures=%s)" % (more, self.ok, self.failures[-3:]))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        wait_for(lambda: self.ok or self.failures, what="the load's first response")
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "load threads did not stop"

    def summary(self):
        kinds = collections.Counter(f.kind for f in self.failures)
        return "ok=%d failures=%s %s" % (self.ok, dict(kinds), self.failures[:5])

    def unexplained(self, events, slack=0.25):
        """Failures whose request was not in flight when one of `events` (times) happened."""
        return [f for f in self.failures
                if not any(f.start - slack <= t <= f.end + slack for t in events)]


class Injector:
    """Call `fault()` every `every` seconds, at most `count` times, from a thread.

    `fault` returns something to record (e.g. the pid it killed) or None when it found
    nothing to do (not counted). `events` is [(monotonic time just before, result)].
    """

    def __init__(self, fault, every, count, max_seconds=30.0):
        self.fault, self.every, self.count, self.max_seconds = fault, every, count, max_seconds
        self.events = []
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="injector")

    @property
    def times(self):
        return [t for t, _ in self.events]

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        while len(self.events) < self.count and not self._stop.is_set() \
                and time.monotonic() < deadline:
            if self._stop.wait(self.every):
                return
            before = time.monotonic()
            try:
                result = self.fault()
            except Exception as exc:  # noqa: BLE001 -- reported by the test
                self.errors.append(repr(exc))
                continue
            if result is not None:
                self.events.append((before, result))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def join(self, timeout):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the injector did not finish in %ss" % timeout

    def stop(self):
        self._stop.set()
        self._thread.join(10)


def kill_random_worker(server, rng, sig=signal.SIGKILL):
    """A fault: `sig` to a random serving worker of `server`; returns its pid or None."""
    pids = server.worker_pids()
    if not pids:
        return None
    pid = rng.choice(pids)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return None
    return pid


class TreeWatch:
    """Samples every process under the master, recursively, until stopped.

    Every pid is also added to `server.seen_pids`, which the harness checks at teardown.
    `titles` maps each pid ever seen to its command line; `stale_zombies()` lists children
    that stayed zombies (unreaped) for a while under a live parent of the tree.
    """

    def __init__(self, server, interval=0.02):
        self.server = server
        self.interval = interval
        self.titles = {}
        self.zombies = {}  # pid -> (first seen, parent pid)
        self.max_zombie_age = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="treewatch")
        self._thread.start()

    @property
    def pids(self):
        return set(self.titles)

    def _run(self):
        while not self._stop.wait(self.interval):
            proc = self.server.proc
            if proc is not None and proc.poll() is None:
                self.sample()

    def sample(self):
        try:
            kids = psutil.Process(self.server.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        now = time.monotonic()
        zombies_now = set()
        for kid in kids:
            try:
                status = kid.status()
                ppid = kid.ppid()
            except psutil.Error:
                continue
            title = ""
            if status != psutil.STATUS_ZOMBIE:
                try:
                    title = " ".join(kid.cmdline())  # raises on a zombie, hence apart
                except psutil.Error:
                    pass
            if kid.pid not in self.titles or title:
                self.titles[kid.pid] = title or self.titles.get(kid.pid, "?")
            self.server.seen_pids.add(kid.pid)
            if status == psutil.STATUS_ZOMBIE:
                zombies_now.add(kid.pid)
                first, _ = self.zombies.setdefault(kid.pid, (now, ppid))
                self.max_zombie_age[kid.pid] = max(self.max_zombie_age.get(kid.pid, 0),
                                                   now - first)
        for pid in set(self.zombies) - zombies_now:
            del self.zombies[pid]

    def stale_zombies(self, older_than=3.0):
        return {pid: (round(age, 1), self.titles.get(pid, "?"))
                for pid, age in self.max_zombie_age.items() if age > older_than}

    def count(self, word):
        """Live processes under the master whose title contains `word` (sampled now)."""
        return [pid for pid, title in self.server.children() if word in title]

    def stop(self):
        self._stop.set()
        self._thread.join(5)


# -- checks ------------------------------------------------------------------------------

def ctl_stats(server):
    """The master's own view (gunicorn's control socket): workers_current, workers_target."""
    return server.control("show stats")


def settle(server, workers, timeout=20.0, what=""):
    """The server is back to `workers` workers and serves.

    Agreement of three views: the master's target (num_workers) and its worker table
    (control socket), and the live processes titled "worker [" under the master (so old
    workers still exiting do not count as settled).
    """
    def agreed():
        live = server.worker_pids()
        if len(live) != workers:
            return False
        stats = ctl_stats(server)
        return stats["workers_target"] == workers and stats["workers_current"] == workers
    try:
        wait_for(agreed, timeout, interval=0.05, what="%d workers %s" % (workers, what))
    except AssertionError:
        raise AssertionError("server did not return to %d workers %s: live workers %s, "
                             "master says %s\n%s" % (workers, what, server.worker_pids(),
                                                     ctl_stats(server), server.log())) from None
    for _ in range(4):
        status, body = server.request("/", timeout=10.0)
        assert status == 200, (status, body)
    zombies = server.watch.stale_zombies()
    assert not zombies, "children left unreaped by a live master: %s" % zombies


def finish(server, sig=signal.SIGTERM, expect_code=0, timeout=30.0):
    """Stop the server; no process of its tree may remain (running or unreaped)."""
    watch = server.watch
    watch.sample()
    server.track()
    code = server.stop(sig, timeout=timeout)
    watch.stop()
    assert code == expect_code, "master exited with %s, expected %s\n%s" % (
        code, expect_code, server.log())
    tree = watch.pids | server.seen_pids
    survivors = server.alive(tree, grace=10.0)
    assert not survivors, "processes outlived the master: %s\n%s" % (
        {pid: watch.titles.get(pid) for pid in survivors}, server.log())
    zombies = watch.stale_zombies()
    assert not zombies, "children left unreaped by a live master: %s" % zombies


# Log lines at ERROR/CRITICAL, or tracebacks, that a case did not expect fail it.
PROBLEM = re.compile(r"\[(ERROR|CRITICAL)\]|^Traceback")


def unexpected_log_lines(server, allowed=()):
    patterns = [re.compile(p) for p in allowed]
    out = []
    for line in server.log().splitlines():
        if PROBLEM.search(line) and not any(p.search(line) for p in patterns):
            out.append(line)
    return out


def check_log(server, allowed=()):
    bad = unexpected_log_lines(server, allowed)
    assert not bad, "unexpected errors in the log:\n%s\n---- full log ----\n%s" % (
        "\n".join(bad[:20]), server.log())


def rng_for(request):
    """A random generator seeded per test, with the seed printed for a rerun."""
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 30))
    print("chaos seed for %s: CHAOS_SEED=%d" % (request.node.name, seed))
    return random.Random(seed)
