#!/usr/bin/env python
"""Spawn-to-first-response latency: spawn_method "smart" vs "direct", side by side.

What is measured: the time from "a worker is needed" to "that worker answered its first
request". Two real gunicorn servers (`-k smartspawn.Worker`, one per spawn method) run
bench/apps/heavy_import.py, an app that takes ~1 s and builds a ~140 MB heap to import,
each with exactly one sync worker. One round on one server:

1. a POST /hold request makes the only worker busy (it blocks reading the request body,
   so it stays busy for exactly as long as we want);
2. t0; SIGTTIN to the master (one more worker wanted); at once a GET /pid request; the
   only worker free to accept it is the new one, so when its answer arrives (t1),
   t1 - t0 is the spawn-to-first-response latency;
3. checks: the answering pid is neither the busy worker nor any worker that existed
   before, and it is a "worker [" child of the master;
4. the held request is released, SIGTTOU brings the server back to one worker (gunicorn
   stops the oldest one, the formerly busy worker), and we wait until it has gone.

Rounds alternate smart, direct, smart, direct, ... (warm-up rounds first, not counted).
Both servers stay up for the whole run; every wait has a deadline, and every process is
stopped by pid (SIGINT, then SIGKILL after a deadline) on the way out, exceptions and
SIGTERM included.

    python bench/spawn_latency.py [--quick] [--repeats N] [--json PATH]
                                                 [--breakdown] [--check]

--breakdown adds gunicorn hooks (pre_fork, post_fork, post_worker_init) that timestamp
each spawn with CLOCK_MONOTONIC, and splits the latency into phases.

See bench/README.md.
"""
import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

if not __package__:  # run as `python bench/spawn_latency.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.server import (SMARTSPAWN, BenchError, Server, Servers, product_source,
                          uss_mb, wait_for, write_json)

APP = "heavy_import:app"
METHODS = ("smart", "direct")

# --breakdown: gunicorn hooks that append "event age pid CLOCK_MONOTONIC" lines to a file.
TIMELINE_HOOKS = """
import os as _os
import time as _time

_TIMELINE = _os.environ["SSBENCH_TIMELINE"]


def _mark(event, worker):
    with open(_TIMELINE, "a") as f:
        f.write("%s %s %s %.9f\\n" % (event, worker.age, _os.getpid(), _time.monotonic()))


def pre_fork(server, worker):
    _mark("pre_fork", worker)


def post_fork(server, worker):
    _mark("post_fork", worker)


def post_worker_init(worker):
    _mark("post_worker_init", worker)
"""

# Targets this benchmark checks.
TARGET_RATIO = 50.0      # smart at least this many times faster than direct (medians)
TARGET_SMART_MS = 5.0    # a smart worker answers within this many ms (median; report.SPAWN_MS)

DEFAULT_REPEATS = 10
QUICK_REPEATS = 3


class HeldRequest:
    """A POST /hold that keeps one sync worker busy until release()."""

    def __init__(self, port, timeout):
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        try:
            self.sock.sendall(b"POST /hold HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                              b"Content-Type: text/plain\r\nContent-Length: 1\r\n\r\n")
            # The worker streams its pid before it blocks: once we have it, it is busy.
            self._read_until(lambda buf: b"\r\n\r\n" in buf and
                             buf.split(b"\r\n\r\n", 1)[1].endswith(b"\n"))
            head, body = self.buffer.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
                raise BenchError("unexpected /hold response: %r" % self.buffer)
            self.pid = json.loads(body.splitlines()[0])["pid"]
        except BaseException:
            self.close()
            raise

    def _read_until(self, done):
        deadline = time.monotonic() + self.timeout
        while not done(self.buffer):
            if time.monotonic() > deadline:
                raise BenchError("timed out reading /hold: %r" % self.buffer)
            chunk = self.sock.recv(65536)  # the socket timeout bounds each recv
            if not chunk:
                raise BenchError("/hold connection closed early: %r" % self.buffer)
            self.buffer += chunk

    def release(self):
        """Let the worker finish the request; returns the rest of the response body."""
        self.sock.sendall(b"x")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        else:
            raise BenchError("timed out waiting for the end of /hold")
        if b"released" not in self.buffer:
            raise BenchError("/hold did not complete: %r" % self.buffer)
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def make_server(method, root, args, app_env):
    """One master with --workers 1 and the given spawn_method (and --breakdown hooks)."""
    config, env = 'spawn_method = "%s"\n' % method, dict(app_env)
    if args.breakdown:
        config += TIMELINE_HOOKS
        env["SSBENCH_TIMELINE"] = str(root / "timeline.txt")
    return Server(method, root, APP, SMARTSPAWN, config, workers=1, env=env,
                  timeout=args.gunicorn_timeout)


def preloader_pids(server):
    return sorted(pid for pid, title in server.children().items() if "preloader" in title)


def timeline(server, pid):
    """{event: CLOCK_MONOTONIC time} of the worker `pid` (--breakdown), or {}."""
    path = server.root / "timeline.txt"
    if not path.exists():
        return {}
    rows = [line.split() for line in path.read_text().splitlines()]
    ages = {age for event, age, wpid, _ in rows if int(wpid) == pid}
    return {event: float(t) for event, age, _, t in rows if age in ages}


def log_tail(server, lines=40):
    return "\n".join(server.log().splitlines()[-lines:])


def measure_once(server, timeout):
    """One round on `server` (see the module docstring); returns a sample dict."""
    before = server.worker_pids()
    if len(before) != 1:
        raise BenchError("%s server: expected 1 worker before the round, found %s"
                         % (server.name, sorted(before)))
    held = HeldRequest(server.port, timeout)
    try:
        if held.pid not in before:
            raise BenchError("%s server: /hold was served by %s, not the worker %s"
                             % (server.name, held.pid, sorted(before)))
        t0 = time.monotonic()  # CLOCK_MONOTONIC, as the --breakdown hooks use
        server.signal(signal.SIGTTIN)
        status, body = server.get("/pid", timeout)
        t1 = time.monotonic()
        info = check_new_worker(server, status, body, held.pid, before)
        uss = uss_mb(info["pid"])
        held.release()
    finally:
        held.close()
    new_pid = info["pid"]
    # Back to one worker: gunicorn stops the oldest (the one that was busy). Reaped, not
    # only exited: until the master reaps it, it still counts it, and the next round's
    # TTIN would spawn nothing until then (~10 ms on a large heap).
    server.signal(signal.SIGTTOU)
    wait_for(lambda: server.worker_pids() == {new_pid} and not psutil.pid_exists(held.pid),
             timeout, "the %s server to return to its one new worker %s" % (
                 server.name, new_pid), interval=0.01)
    sample = {"ms": (t1 - t0) * 1000.0, "pid": new_pid, "busy_pid": held.pid,
              "import_seconds": info.get("import_seconds"), "uss_mb": uss}
    if "SSBENCH_TIMELINE" in server.env:
        sample["phases_ms"] = phases(timeline(server, new_pid), t0, t1)
    return sample


def check_new_worker(server, status, body, busy_pid, before):
    """The /pid answer, checked: from a new worker, a child of the master, listed by it."""
    if status != 200:
        raise BenchError("%s server: /pid answered %s %r" % (server.name, status, body))
    info = json.loads(body)
    new_pid = info["pid"]
    if new_pid == busy_pid or new_pid in before:
        raise BenchError("%s server: /pid was answered by the old worker %s, not a new "
                         "one" % (server.name, new_pid))
    if info.get("ppid") != server.proc.pid:
        raise BenchError("%s server: worker %s has parent %s, not the master %s"
                         % (server.name, new_pid, info.get("ppid"), server.proc.pid))
    workers = server.worker_pids()
    if new_pid not in workers or busy_pid not in workers:
        raise BenchError("%s server: after TTIN the workers are %s; expected %s and %s"
                         % (server.name, sorted(workers), busy_pid, new_pid))
    return info


PHASES = (("master reacts", "t0", "pre_fork"),
          ("fork to worker", "pre_fork", "post_fork"),
          ("worker init", "post_fork", "post_worker_init"),
          ("to response", "post_worker_init", "t1"))


def phases(marks, t0, t1):
    """Split t0..t1 at the hook timestamps: {phase: ms} (None where a mark is missing)."""
    marks = {**marks, "t0": t0, "t1": t1}
    return {name: (marks[b] - marks[a]) * 1000.0 if a in marks and b in marks else None
            for name, a, b in PHASES}


def summarize(samples):
    ms = [s["ms"] for s in samples]
    uss = [s["uss_mb"] for s in samples if s["uss_mb"] is not None]
    imports = [s["import_seconds"] for s in samples if s["import_seconds"] is not None]
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
        "samples_ms": [round(v, 3) for v in ms],
        "worker_uss_mb_median": statistics.median(uss) if uss else None,
        "app_import_s_median": statistics.median(imports) if imports else None,
        # A smart worker inherits the preloader's import: one value for all of them.
        "distinct_app_imports": len({round(v, 9) for v in imports}),
        "phases_ms_median": {
            name: statistics.median(v) if v else None
            for name, v in ((name, [s["phases_ms"][name] for s in samples
                                    if s.get("phases_ms", {}).get(name) is not None])
                            for name, _, _ in PHASES)
        } if any("phases_ms" in s for s in samples) else None,
    }


def run(args, workdir):
    app_env = {"HEAVY_IMPORT_RECORDS": str(args.records),
               "HEAVY_IMPORT_SECONDS": str(args.import_seconds)}
    with Servers() as started:
        try:
            started.start(*(make_server(method, workdir / method, args, app_env)
                            for method in METHODS), timeout=args.start_timeout)
            servers = {server.name: server for server in started.servers}
            for server in started.servers:
                log("%s server up on port %s (master pid %s)"
                    % (server.name, server.port, server.proc.pid))
            return measure_all(args, servers)
        except Exception:
            for server in started.servers:
                print("---- %s server log (tail) ----\n%s" % (server.name, log_tail(server)),
                      file=sys.stderr)
            raise


def measure_all(args, servers):
    """Warm-up then measured rounds, alternating methods -> {method: [sample, ...]}."""
    preloaders = preloader_pids(servers["smart"])
    if len(preloaders) != 1:
        warn("smart server: expected one preloader child, found %s" % preloaders)
    if preloader_pids(servers["direct"]):
        warn("direct server has a preloader: %s" % preloader_pids(servers["direct"]))
    samples = {method: [] for method in METHODS}
    for i in range(args.warmup + args.repeats):
        warm = i < args.warmup
        for method in METHODS:  # A B A B ...
            sample = measure_once(servers[method], args.spawn_timeout)
            log("%s %2d/%d %-6s %9.2f ms  (worker %s)"
                % ("warm-up" if warm else "round  ", (i if warm else i - args.warmup) + 1,
                   args.warmup if warm else args.repeats, method, sample["ms"],
                   sample["pid"]))
            if not warm:
                samples[method].append(sample)
    preloaders_after = preloader_pids(servers["smart"])
    if preloaders_after != preloaders:
        warn("smart server's preloader changed during the run: %s -> %s"
             % (preloaders, preloaders_after))
    return samples


def report(args, samples, elapsed):
    stats = {method: summarize(samples[method]) for method in METHODS}
    ratio = stats["direct"]["median_ms"] / stats["smart"]["median_ms"]
    smart_median = stats["smart"]["median_ms"]
    ratio_ok = ratio >= TARGET_RATIO
    smart_ok = smart_median < TARGET_SMART_MS

    out = []
    out.append("")
    out.append("Spawn-to-first-response latency (SIGTTIN -> new worker's first response)")
    out.append("app: bench/apps/heavy_import.py (%d records, import >= %.1f s); "
               "%d rounds per method (+%d warm-up), order smart,direct,smart,direct,..."
               % (args.records, args.import_seconds, args.repeats, args.warmup))
    out.append("")
    header = "%-8s %4s %11s %10s %10s %10s %14s %13s" % (
        "method", "n", "median ms", "min ms", "max ms", "mean ms", "app import s", "worker USS MB")
    out.append(header)
    out.append("-" * len(header))
    for method in METHODS:
        s = stats[method]
        imp = "%.3f" % s["app_import_s_median"] if s["app_import_s_median"] is not None else "?"
        uss = "%.1f" % s["worker_uss_mb_median"] if s["worker_uss_mb_median"] is not None \
            else "?"
        out.append("%-8s %4d %11.2f %10.2f %10.2f %10.2f %14s %13s" % (
            method, s["n"], s["median_ms"], s["min_ms"], s["max_ms"], s["mean_ms"], imp, uss))
    out.append("")
    out.append("ratio direct/smart (medians): %8.1fx   target >= %.0fx   %s"
               % (ratio, TARGET_RATIO, "PASS" if ratio_ok else "FAIL"))
    out.append("smart median:                 %8.2f ms  target < %.0f ms   %s"
               % (smart_median, TARGET_SMART_MS, "PASS" if smart_ok else "FAIL"))
    if any(stats[m]["phases_ms_median"] for m in METHODS):
        out.append("")
        out.append("breakdown (medians, ms; hooks: pre_fork, post_fork, post_worker_init):")
        out.append("%-8s" % "method" + "".join("%16s" % name for name, _, _ in PHASES))
        for method in METHODS:
            ph = stats[method]["phases_ms_median"] or {}
            out.append("%-8s" % method + "".join(
                "%16s" % ("%.2f" % ph[name] if ph.get(name) is not None else "?")
                for name, _, _ in PHASES))
    out.append("")
    out.append("(app import s: the import time recorded by the app module in the answering "
               "worker; smart workers inherit the preloader's one import (distinct imports "
               "seen: smart %d, direct %d). worker USS: its private memory after the first "
               "response.)" % (stats["smart"]["distinct_app_imports"],
                               stats["direct"]["distinct_app_imports"]))
    source = product_source()
    out.append("gunicorn_smartspawn from %s (git %s); total run time: %.1f s; "
               "load average before the run: %.2f (%d CPUs)"
               % (source["path"], source["git"] or "?", elapsed,
                  args.loadavg_at_start[0], os.cpu_count()))
    for message in WARNINGS:
        out.append("WARNING: %s" % message)
    print("\n".join(out))

    result = {
        "benchmark": "spawn_latency",
        "metric": "ms from SIGTTIN to the new worker's first response",
        "config": {"repeats": args.repeats, "warmup": args.warmup, "quick": args.quick,
                   "breakdown": args.breakdown,
                   "records": args.records, "import_seconds": args.import_seconds,
                   "order": "alternating smart,direct"},
        "methods": stats,
        "ratio_direct_over_smart_median": ratio,
        "targets": {
            "ratio_min": TARGET_RATIO, "ratio_ok": ratio_ok,
            "smart_median_max_ms": TARGET_SMART_MS, "smart_ok": smart_ok,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": list(args.loadavg_at_start),
            "loadavg_at_end": list(os.getloadavg()),
            "gunicorn": gunicorn_version(),
            "gunicorn_smartspawn": source,
        },
        "warnings": WARNINGS,
        "elapsed_s": elapsed,
    }
    return result, ratio_ok and smart_ok


def gunicorn_version():
    try:
        from importlib.metadata import version
        return version("gunicorn")
    except Exception:  # pragma: no cover - informational only
        return None


def log(message):
    print(message, file=sys.stderr, flush=True)


WARNINGS = []


def warn(message):
    WARNINGS.append(message)
    log("warning: " + message)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Spawn-to-first-response latency of smartspawn's spawn_method "
                    "'smart' vs 'direct' on an app that takes ~1 s to import.")
    parser.add_argument("--repeats", type=int, default=None,
                        help="measured rounds per method (default %d, --quick: %d)"
                        % (DEFAULT_REPEATS, QUICK_REPEATS))
    parser.add_argument("--warmup", type=int, default=1,
                        help="unmeasured rounds per method first (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="%d rounds per method; well under a minute" % QUICK_REPEATS)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 when a target is missed")
    parser.add_argument("--breakdown", action="store_true",
                        help="add gunicorn hooks (pre_fork, post_fork, post_worker_init) "
                             "that timestamp each spawn, and report its phases; the hooks "
                             "add a few file writes to the measured path")
    parser.add_argument("--records", type=int, default=170000,
                        help="records the app builds at import (default 170000, ~140 MB)")
    parser.add_argument("--import-seconds", type=float, default=1.0,
                        help="minimum app import time (default 1.0)")
    parser.add_argument("--start-timeout", type=float, default=60.0,
                        help="deadline for both servers to serve, s (default 60)")
    parser.add_argument("--spawn-timeout", type=float, default=30.0,
                        help="deadline for each request and each wait in a round, s "
                             "(default 30)")
    parser.add_argument("--gunicorn-timeout", type=int, default=120,
                        help="gunicorn --timeout (default 120; must exceed a round)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the servers' directory (logs) and print its path")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)  # unwinds through every finally: servers stop

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    workdir = Path(tempfile.mkdtemp(prefix="ssbench-"))
    args.loadavg_at_start = os.getloadavg()  # other load makes the smart figures noisy
    started = time.monotonic()
    failed = True
    try:
        samples = run(args, workdir)
        result, ok = report(args, samples, time.monotonic() - started)
        write_json(args.json, result)
        if args.json:
            log("results written to %s" % args.json)
        failed = False
    except (BenchError, OSError) as exc:  # OSError: a request failed or timed out
        print("benchmark failed: %r" % exc if isinstance(exc, OSError)
              else "benchmark failed: %s" % exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs or failed:
            log("server logs kept in %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if (args.check and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
