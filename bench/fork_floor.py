"""The least work any refork by fork() does, done outside the server: its latency floor.

A refork of W workers forks W new workers from a warmed process; each new worker writes
to the pages it shares with it as it answers its first request (a copy-on-write fault
each); each old worker exits (its address space torn down). This process imports the
same app and answers a request through it (warmed, like a template), then, on each
"go" line on stdin, does that much for W workers, one at a time: fork; the child answers
one request through the app and exits; the parent reaps it. PATH's "{id}" is a random
id in 1..N for each request, as the load's are. It prints "done" after the
last. bench/events.py runs it as the "floor" event, beside the refork, under the same
load: a reference for what a refork's p99 can be on that machine (not a strict bound:
smartspawn forks its standbys ahead of need, partly before the event). No server, no
master, no standby: none of smartspawn's own work.

`--double`: the least work smartspawn's way of forking does (docs/how-it-works.md: the
master stays every worker's parent): W + 1 children (a refork's stand-in first), each
forked through a middle process that forks it and exits at once, so that the child is
re-parented, here to this process (a subreaper, as the master is).

    python -m bench.fork_floor MODULE:APP PATH [--ids N] [--workers W] [--double]
    (stdin: "go" lines; stdout: "ready", then "done" per go)
"""
import argparse
import importlib
import io
import os
import random
import subprocess
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

from bench.server import APP_DIR, BenchError
from gunicorn_smartspawn.shared import _linux


class Floor:
    """This script in a process of its own, run by a benchmark: started (the app
    imported) when made, go() for each replacement, stop() at the end."""

    def __init__(self, app, path, ids, workers, env, double=False):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.fork_floor", app, path, "--ids", str(ids),
             "--workers", str(workers), *(["--double"] if double else [])],
            cwd=Path(__file__).resolve().parents[1], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
        self.expect("ready", "did not start")

    def go(self):
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        self.expect("done", "failed")

    def expect(self, line, what):
        if self.process.stdout.readline().strip() != line:
            self.stop()
            raise BenchError("bench/fork_floor.py %s (exit %s)" % (what, self.process.returncode))

    def stop(self):
        self.process.kill()
        self.process.wait()


def request(app, path):
    """One GET through the WSGI app, as a worker would answer it; its body is read."""
    environ = {"PATH_INFO": path, "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    body = app(environ, lambda status, headers, exc_info=None: None)
    try:
        for _ in body:
            pass
    finally:
        getattr(body, "close", lambda: None)()


def replace_workers(app, path, ids, workers, double=False):
    """`double`: workers + 1 children, each by a double fork (the caller is a subreaper)."""
    for _ in range(workers + 1 if double else workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if not double or os.fork() == 0:
                    request(app, path.format(id=random.randint(1, ids)))
                code = 0
            finally:
                os._exit(code)
        os.waitpid(pid, 0)
    while double:  # the re-parented children
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", help="MODULE:APP, from bench/apps")
    parser.add_argument("path", help="the path each child answers")
    parser.add_argument("--ids", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--double", action="store_true",
                        help="smartspawn's way: a stand-in more, each child by a double fork")
    args = parser.parse_args(argv)
    if args.double:
        _linux.become_subreaper()
    sys.path.insert(0, str(APP_DIR))
    module, name = args.app.split(":")
    app = getattr(importlib.import_module(module), name)
    request(app, args.path.format(id=1))  # warmed, like the template
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "go":
            replace_workers(app, args.path, args.ids, args.workers, args.double)
            print("done", flush=True)


if __name__ == "__main__":
    main()
