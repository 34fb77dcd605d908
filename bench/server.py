"""One gunicorn server for the benchmarks in load.py, events.py and template_spawn.py.

Each server runs in its own directory (config, log, control socket) and its own session
(start_new_session), binds 127.0.0.1:0 and is found by the log line
"Listening at: http://127.0.0.1:PORT". It is stopped by pid: SIGINT to the master,
SIGKILL after a deadline, then SIGKILL to anything of its session still running.
Every wait is a poll with a deadline.
"""
import http.client
import os
import re
import signal
import subprocess
import sys
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

    def __init__(self, name, root, app, args=(), config="", workers=2, env=None):
        root.mkdir(parents=True)
        (root / "gunicorn.conf.py").write_text(config)
        self.name, self.root, self.workers = name, root, workers
        self.log_path = root / "server.log"
        self.cmd = [GUNICORN, *args, "-c", str(root / "gunicorn.conf.py"),
                    "--workers", str(workers), "--bind", "127.0.0.1:0",
                    "--control-socket", str(root / "gunicorn.ctl"),
                    "--pythonpath", str(APP_DIR), "--timeout", "60",
                    "--graceful-timeout", "10", "--log-level", "info", app]
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

    def children(self):
        """{pid: title} of the master's live children."""
        try:
            kids = psutil.Process(self.proc.pid).children()
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
        for server in self.servers:
            killed = server.stop()
            if killed:
                self.killed[server.name] = killed
                print("warning: %s: pids %s outlived the master: SIGKILL"
                      % (server.name, killed), file=sys.stderr)
