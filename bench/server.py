"""What every benchmark shares: one gunicorn server, polling waits, memory and git facts.

Each server runs in its own directory (config, log, control socket) and its own session
(start_new_session), binds 127.0.0.1:0 and is found by the log line
"Listening at: http://127.0.0.1:PORT". It is stopped by pid: SIGINT to the master,
SIGKILL after a deadline, then SIGKILL to anything of its session still running.
Every wait is a poll with a deadline.
"""
import http.client
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

APP_DIR = Path(__file__).resolve().parent / "apps"
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
SMARTSPAWN = ["-k", "smartspawn.Worker"]


class BenchError(RuntimeError):
    pass


def wait_for(predicate, timeout, what, interval=0.02):
    """Poll `predicate` until it returns a truthy value; BenchError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise BenchError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)
    return value


class Server:
    """`gunicorn [args] -c <root>/gunicorn.conf.py -w W <app>` on an ephemeral port."""

    def __init__(self, name, root, app, args=(), config="", workers=2, env=None, timeout=60,
                 log_level="info"):
        """`log_level="debug"`: for what the master logs there only (a template's ready
        time, its immortal pass)."""
        root.mkdir(parents=True)
        (root / "gunicorn.conf.py").write_text(config)
        self.name, self.root, self.workers = name, root, workers
        self.log_path = root / "server.log"
        self.cmd = [GUNICORN, *args, "-c", str(root / "gunicorn.conf.py"),
                    "--workers", str(workers), "--bind", "127.0.0.1:0",
                    "--control-socket", str(root / "gunicorn.ctl"),
                    "--pythonpath", str(APP_DIR), "--timeout", str(timeout),
                    "--graceful-timeout", "10", "--log-level", log_level, app]
        self.env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        self.proc = self.port = None

    def launch(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         cwd=self.root, start_new_session=True)
        return self

    def wait_ready(self, timeout=60.0):
        match = wait_for(lambda: self.alive() and re.search(
            r"Listening at: http://127\.0\.0\.1:(\d+)", self.log()), timeout,
            "%s to listen" % self.name)
        self.port = int(match.group(1))
        self.wait_workers(timeout)
        return self

    def wait_workers(self, timeout, exclude=()):
        """Wait until W workers (none of `exclude`) run and the server answers."""
        def ready():
            pids = self.worker_pids()
            return len(pids) == self.workers and not pids & set(exclude) and self.get_ok()

        wait_for(lambda: self.alive() and ready(), timeout,
                 "%d workers of %s (not %s)" % (self.workers, self.name, sorted(exclude)))

    def alive(self):
        if self.proc.poll() is not None:
            raise BenchError("%s exited with %s:\n%s" % (self.name, self.proc.returncode,
                                                       self.log()[-3000:]))
        return True

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern, timeout, since=0):
        """Wait for `pattern` in the log after character `since`; returns the match."""
        return wait_for(lambda: self.alive() and re.search(pattern, self.log()[since:]),
                        timeout, "%r in the log of %s" % (pattern, self.name))

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def children(self, recursive=False):
        """{pid: title} of the master's live children (or all its descendants)."""
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=recursive)
        except psutil.NoSuchProcess:
            return {}
        out = {}
        for kid in kids:
            try:
                if kid.status() != psutil.STATUS_ZOMBIE:
                    out[kid.pid] = " ".join(kid.cmdline())
            except psutil.NoSuchProcess:
                pass
        return out

    def worker_pids(self):
        return {pid for pid, title in self.children().items() if "worker [" in title}

    def get(self, path, timeout=10.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get_json(self, path, timeout=30.0):
        status, body = self.get(path, timeout)
        if status != 200:
            raise BenchError("%s: GET %s -> HTTP %s" % (self.name, path, status))
        return json.loads(body)

    def get_ok(self):
        try:
            return self.get("/", timeout=5.0)[0] == 200
        except OSError:
            return False

    def session(self):
        """Live processes of the master's session: its whole tree, however re-parented."""
        out = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.proc.pid and \
                        proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
            except (OSError, psutil.Error):
                pass
        return out

    def cpu_seconds(self):
        """CPU time (user + system) used so far by the live processes of the session."""
        return sum(self.cpu_by_pid().values())

    def cpu_by_pid(self):
        """{pid: CPU seconds used so far} of the live processes of the session; one gone
        since session() found it is left out, not counted as having used none."""
        seconds = {proc.pid: process_seconds(proc, gone=None) for proc in self.session()}
        return {pid: s for pid, s in seconds.items() if s is not None}

    def stop(self):
        """SIGINT, SIGKILL after 10 s; SIGKILL to its session 5 s later. -> pids killed."""
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        left = psutil.wait_procs(self.session(), timeout=5)[1]
        for proc in left:
            proc.kill()
        return [proc.pid for proc in left]


class Servers:
    """A context manager that stops every server it started, whatever happens."""

    def __init__(self):
        self.servers = []
        self.killed = {}

    def start(self, *servers, timeout=60.0):
        """Launch `servers` together, then wait until each serves; -> the first one."""
        for server in servers:
            self.servers.append(server.launch())
        for server in servers:
            server.wait_ready(timeout)
        return servers[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # Teardown must not be cut short by a second ^C or TERM; each stop() has deadlines.
        previous = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            for server in self.servers:
                killed = server.stop()
                if killed:
                    self.killed[server.name] = killed
                    print("warning: %s: pids %s outlived the master: SIGKILL"
                          % (server.name, killed), file=sys.stderr)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def task_ns(pid):
    """On-CPU nanoseconds of every thread of `pid` (schedstat); None if not readable."""
    total = 0
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            if tid == str(pid):
                return None  # no schedstat here (kernel without CONFIG_SCHED_INFO)
    return total


def idle_for(servers, window, limit):
    """Whether each of `servers` uses < `limit` of a CPU over the next `window` s, no
    process of it starting or ending meanwhile: a process that ends takes the CPU it used
    out of the sum, so a plain worker freeing its heap as it exits would read as idle."""
    before = [server.cpu_by_pid() for server in servers]
    time.sleep(window)
    for server, was in zip(servers, before, strict=True):
        now = server.cpu_by_pid()
        if now.keys() != was.keys() or sum(now.values()) - sum(was.values()) >= limit * window:
            return False
    return True


def process_seconds(proc, gone=0.0):
    """On-CPU seconds of one process (all its threads); `gone` once it is gone."""
    ns = task_ns(proc.pid)
    if ns is not None:
        return ns / 1e9
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return gone
    return times.user + times.system


def uss_mb(pid):
    """Private (unshared) memory of `pid` in MB, or None if it cannot be read."""
    try:
        return psutil.Process(pid).memory_full_info().uss / 2**20
    except (psutil.Error, AttributeError):
        return None


def smaps_rollup_mb(pid):
    """{field: MiB} of /proc/PID/smaps_rollup (Pss, Private_Clean, ...); None if gone."""
    fields = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for parts in map(str.split, f):
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields


def product_source():
    """Where gunicorn_smartspawn is imported from, and its git commit (+dirty) if any."""
    spec = importlib.util.find_spec("gunicorn_smartspawn")
    if spec is None or spec.origin is None:
        return {"path": None, "git": None}
    where = str(Path(spec.origin).parent)
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10)
        git = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") \
            if commit.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        git = None
    return {"path": where, "git": git}


def run_in_tmpdir(prefix, run, args):
    """run(args, tmpdir) in a temporary directory; SIGTERM exits through every `finally`.
    -> its result, or None once the failure is printed."""
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            return run(args, Path(tmp))
        except (BenchError, OSError) as exc:  # OSError: a request failed or timed out
            print("benchmark failed: %s" % exc, file=sys.stderr)
            return None


def write_json(path, result):
    """--json PATH: write `result` there (nothing without PATH)."""
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
