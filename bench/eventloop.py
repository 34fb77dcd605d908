#!/usr/bin/env python
"""The event-loop worker classes against the plain ones they extend, side by side.

Three pairs, each the same app under a smartspawn class and under the gunicorn class it
is built on (`--workers 2`, `--bind 127.0.0.1:0`, own `--control-socket` each):

  asgi     FastAPI app    -k smartspawn.ASGIWorker    vs  -k asgi (gunicorn 27's own)
  uvicorn  FastAPI app    -k smartspawn.UvicornWorker vs  -k uvicorn_worker.UvicornWorker
  gevent   WSGI app       -k smartspawn.GeventWorker  vs  -k gevent

(bench/apps/eventloop_fastapi.py and eventloop_wsgi.py: the same endpoints, the same heaps,
from eventloop_core.py.) Per pair, four measures; in each, the two servers run at the
same time and rounds alternate plain, smartspawn, plain, smartspawn, ...; every ratio is
the median of the per-round ratios smartspawn / plain (or plain / smartspawn for spawn):

  spawn   SIGTTIN to the new worker's first response, app with heavy_import's heap (~1 s,
          ~140 MB to import). Both workers are held busy first: GET /hold blocks the
          worker's whole process (loop or hub) on a named pipe, so the only worker that
          can accept the GET /pid sent right after SIGTTIN is the new one (checked: a new
          pid, child of the master). Release, SIGTTOU, wait for 2 workers.
  hello   requests/s of GET / (hello world), wrk (1 thread, 8 connections, one request
          per connection: see run_wrk), on the same servers as spawn (smartspawn with
          its defaults).
  gc      p50/p99 of GET /garbage (1 000 rows in reference cycles per request) on a heap
          of ~1 M tracked objects (oob_app's), smartspawn with `oob_gc = True`, plain
          with nothing: Python client processes, 4 connections, one request per
          connection (Connection: close), every request's own latency.
  memory  PSS (/proc/PID/smaps_rollup) after the same traffic, a fresh pair of servers
          per round, app with lazy_cache's ~100 MB per-process cache: /cache until every
          worker built its cache ("warm"); smartspawn (`fork_worker = 10**9`): SIGURG,
          wait for "refork to generation 2 ... done", /cache once per new worker (each
          must find the cache built by the template); plain: /cache once more per worker.
          Reported: the workers' PSS and the whole server's (master, preloader, template,
          standbys, workers), and plain's "ideal": its master + one warmed worker.

Targets: spawn plain/smart >= 50x and smart < 20 ms; whole-server PSS after the
refork <= 1.3x the ideal (memory_lifecycle.py's bound; with 2 workers the ratio to plain
cannot go much below ~0.5); /garbage p99 <= 0.7x plain at >= 0.97x its throughput;
hello-world throughput >= 0.98x plain.

    python bench/eventloop.py [--quick] [--pairs asgi,uvicorn,gevent]
                              [--measures spawn,hello,gc,memory] [--json PATH] [--check]
                              [--plots DIR] [--breakdown]
    python bench/eventloop.py --from-json PATH [--plots DIR]

Every wait has a deadline; servers are stopped by pid (SIGTERM, then bench/server.py's
SIGINT / SIGKILL of anything left in their session), on success, error, ^C and SIGTERM.
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

if not __package__:  # run as `python bench/eventloop.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loadgen, oob_latency, plots, refork_memory, spawn_latency
from bench.server import (BenchError, Server, Servers, idle_for, product_source, uss_mb,
                          wait_for, write_json)

PAIRS = {  # name -> (app, smartspawn class, plain class)
    "asgi": ("eventloop_fastapi:app", "smartspawn.ASGIWorker", "asgi"),
    "uvicorn": ("eventloop_fastapi:app", "smartspawn.UvicornWorker",
                "uvicorn_worker.UvicornWorker"),
    "gevent": ("eventloop_wsgi:app", "smartspawn.GeventWorker", "gevent"),
}
MEASURES = ("spawn", "hello", "gc", "memory")
SIDES = ("plain", "smart")  # the order of every round

TARGET_SPAWN_RATIO = 50.0    # plain / smart, at least
TARGET_SPAWN_MS = 20.0       # smart median, below
TARGET_IDEAL_RATIO = 1.3     # whole-server PSS after the refork / ideal, at most
TARGET_GC_P99 = 0.7          # smart / plain, at most
TARGET_GC_RPS = 0.97         # smart / plain, at least
TARGET_HELLO_RPS = 0.98      # smart / plain, at least

# Each heap is only built where it is measured (eventloop_core.py).
NO_HEAP = {"HEAVY_IMPORT_RECORDS": "0", "HEAVY_IMPORT_SECONDS": "0",
           "OOB_BENCH_RECORDS": "1", "LAZY_CACHE_RECORDS": "1"}

SESSIONS = set()  # every master's pid: its session (start_new_session), for the ps check
WARNINGS = []


def log(message):
    print(message, file=sys.stderr, flush=True)


def warn(message):
    WARNINGS.append(message)
    log("warning: " + message)


class EventLoopServer(Server):
    """bench/server.py's Server, stopped with SIGTERM first: plain uvicorn-worker's
    workers ignore what the master sends them on SIGINT, which costs every stop the
    10 s graceful timeout and then SIGKILLs (see docs/benchmarks/eventloop.md)."""

    def launch(self):
        super().launch()
        SESSIONS.add(self.proc.pid)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass  # Server.stop: SIGINT, SIGKILL
        return super().stop()


def make_server(pair, side, root, args, env, config=""):
    app, smart_class, plain_class = PAIRS[pair]
    worker_class = smart_class if side == "smart" else plain_class
    return EventLoopServer(side, root, app, ["-k", worker_class], config, args.workers,
                           {**NO_HEAP, **env}, timeout=120)


def wait_idle(server, limit=0.05, window=0.3, timeout=10.0):
    """Until the server's processes use < `limit` of a CPU over `window` s (a plain worker
    still importing, an exiting one, must not weigh on the next run); a warning after
    `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if idle_for([server], window, limit):
            return
    warn("%s server not idle after %.0f s" % (server.name, timeout))


# -- spawn ---------------------------------------------------------------------------------

class Hold:
    """GET /hold?fifo=PATH: the worker that accepts it blocks its whole process (loop,
    hub) until release() writes a byte into the named pipe PATH."""

    def __init__(self, server, fifo, timeout):
        self.fifo, self.timeout, self.released = str(fifo), timeout, False
        os.mkfifo(self.fifo)
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
        self.sock.sendall(("GET /hold?fifo=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Connection: close\r\n\r\n" % quote(self.fifo)).encode())
        mark = Path(self.fifo + ".pid")
        self.pid = int(wait_for(lambda: mark.exists() and mark.read_text(), timeout,
                                "a worker to take /hold", 0.002))

    def _write(self):
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: the worker has not opened it yet
            return False
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
        return True

    def release(self):
        wait_for(self._write, self.timeout, "worker %s to wait on its pipe" % self.pid,
                 0.002)
        self.released = True
        data = b""
        while chunk := self.sock.recv(65536):  # Connection: close; the timeout bounds it
            data += chunk
        self.sock.close()
        if not data.startswith(b"HTTP/1.1 200") or b"released" not in data:
            raise BenchError("/hold of worker %s ended with %r" % (self.pid, data[:300]))

    def close(self):
        """On the way out after an error: never leave a worker blocked."""
        if not self.released:
            deadline = time.monotonic() + 2
            while not self._write() and time.monotonic() < deadline:
                time.sleep(0.01)
        self.sock.close()


def spawn_once(server, fifo_dir, timeout):
    """One round (module docstring) -> {"ms", "pid", "import_seconds", "uss_mb"}."""
    before = server.worker_pids()
    if len(before) != server.workers:
        raise BenchError("%s: %d workers before the round: %s" % (server.name, server.workers,
                                                                  sorted(before)))
    holds = []
    try:
        for _ in before:  # one at a time: a held worker accepts nothing, the next one must
            holds.append(Hold(server, fifo_dir / ("hold-%d" % len(list(fifo_dir.iterdir()))),
                              timeout))
        if {h.pid for h in holds} != before:
            raise BenchError("%s: /hold taken by %s, not by the workers %s"
                             % (server.name, [h.pid for h in holds], sorted(before)))
        t0 = time.monotonic()
        server.signal(signal.SIGTTIN)
        status, body = server.get("/pid", timeout)
        t1 = time.monotonic()
        info = json.loads(body) if status == 200 else {}
        new = info.get("pid")
        if new is None or new in before or info.get("ppid") != server.proc.pid:
            raise BenchError("%s: /pid answered %s %r: not a new child of the master %s"
                             % (server.name, status, body[:200], server.proc.pid))
        uss = uss_mb(new)
        for hold in holds:
            hold.release()
    finally:
        for hold in holds:
            hold.close()
    server.signal(signal.SIGTTOU)
    wait_for(lambda: server.alive() and len(pids := server.worker_pids()) == server.workers
             and new in pids, timeout, "%s back to %d workers" % (server.name, server.workers))
    sample = {"ms": (t1 - t0) * 1e3, "pid": new, "import_seconds": info.get("import_seconds"),
              "uss_mb": uss}
    if "SSBENCH_TIMELINE" in server.env:
        marks = timeline(server.env["SSBENCH_TIMELINE"], new)
        sample["phases_ms"] = spawn_latency.phases(marks, t0, t1)
    return sample


def timeline(path, pid):
    """{event: CLOCK_MONOTONIC time} of worker `pid` from the --breakdown hooks' file."""
    rows = [line.split() for line in Path(path).read_text().splitlines()]
    ages = {age for _, age, wpid, _ in rows if int(wpid) == pid}
    return {event: float(t) for event, age, _, t in rows if age in ages}


def measure_spawn(servers, args, workdir):
    fifo_dir = workdir / "fifos"
    fifo_dir.mkdir(exist_ok=True)
    samples = {side: [] for side in SIDES}
    for i in range(args.spawn_warmup + args.spawn_rounds):
        for side in SIDES:
            wait_idle(servers[side])
            sample = spawn_once(servers[side], fifo_dir, args.timeout)
            warm = i < args.spawn_warmup
            log("  spawn %s %d  %-5s %8.1f ms  (worker %s)" % (
                "warm-up" if warm else "round", i + 1, side, sample["ms"], sample["pid"]))
            if not warm:
                samples[side].append(sample)
    stats = {side: spawn_latency.summarize(samples[side]) for side in SIDES}
    per_round = [p["ms"] / s["ms"] for p, s in zip(samples["plain"], samples["smart"],
                                                  strict=True)]
    smart_ms, ratio = stats["smart"]["median_ms"], statistics.median(per_round)
    return {"stats": stats, "samples": samples, "ratio": ratio,
            "ratio_of_medians": stats["plain"]["median_ms"] / smart_ms,
            "ratio_range": [min(per_round), max(per_round)],
            "targets": {"spawn plain/smart >= %.0fx" % TARGET_SPAWN_RATIO:
                        target(ratio, ratio >= TARGET_SPAWN_RATIO),
                        "spawn smart median < %.0f ms" % TARGET_SPAWN_MS:
                        target(smart_ms, smart_ms < TARGET_SPAWN_MS)}}


def target(value, met):
    return {"value": value, "met": bool(met)}


# -- load: hello (wrk) and gc (Python clients) ----------------------------------------------

def python_load(port, path, connections, seconds):
    """oob_latency's client processes, one request per connection (Connection: close:
    event-loop servers keep connections alive otherwise)."""
    return {"client": "python",
            **oob_latency.run_python_client(port, path, connections, seconds, close=True)}


def run_wrk(port, path, connections, seconds, workdir):
    """loadgen.run_wrk's run, one request per connection (Connection: close). With
    keep-alive, wrk opens its connections in one burst and the worker that wakes first
    may accept them all: in 5 of 12 probe runs (plain and smartspawn alike) one of the
    two workers served nearly everything, halving that run's throughput."""
    return loadgen.run_wrk(port, path, 0, connections, seconds, workdir,
                           headers=["Connection: close"])


def one_load(server, path, client, connections, seconds, workdir):
    wait_idle(server)
    cpu = server.cpu_seconds()
    if client == "wrk":
        result = run_wrk(server.port, path, connections, seconds, workdir)
    else:
        result = python_load(server.port, path, connections, seconds)
    server.alive()
    result["cpu_us"] = (server.cpu_seconds() - cpu) / max(1, result["requests"]) * 1e6
    return result


def measure_load(servers, path, client, connections, rounds, seconds, workdir):
    """One warm-up run per server, then `rounds` runs alternating plain, smart."""
    runs = {side: [] for side in SIDES}
    for side in SIDES:
        one_load(servers[side], path, client, connections, max(1, seconds // 2), workdir)
    for n in range(rounds):
        for side in SIDES:
            r = one_load(servers[side], path, client, connections, seconds, workdir)
            runs[side].append(r)
            log("  %-8s round %d  %-5s %7.0f req/s  p50 %6.2f  p99 %7.2f  p99.9 %7.2f ms"
                "  cpu %5.0f us/req  errors %d" % (path, n + 1, side, r["rps"], r["p50"],
                                                   r["p99"], r["p999"], r["cpu_us"],
                                                   r["errors"]))
    figures = ("rps", "p50", "p99", "p999", "cpu_us")
    medians = {side: {k: statistics.median(r[k] for r in runs[side]) for k in figures}
               for side in SIDES}
    for side in SIDES:
        medians[side]["errors"] = sum(r["errors"] for r in runs[side])
    pairs = list(zip(runs["plain"], runs["smart"], strict=True))
    ratios = {k: statistics.median(s[k] / p[k] for p, s in pairs) for k in figures}
    ranges = {k: [min(s[k] / p[k] for p, s in pairs), max(s[k] / p[k] for p, s in pairs)]
              for k in figures}
    return {"client": runs["plain"][0]["client"], "connections": connections,
            "rounds": rounds, "seconds": seconds, "runs": runs, "medians": medians,
            "ratios": ratios, "ratio_ranges": ranges}


def hello_result(result):
    rps = result["ratios"]["rps"]
    errors = sum(m["errors"] for m in result["medians"].values())
    result["targets"] = {"hello req/s smart/plain >= %.2f" % TARGET_HELLO_RPS:
                         target(rps, rps >= TARGET_HELLO_RPS),
                         "hello failed requests = 0": target(errors, errors == 0)}
    return result


def gc_result(result):
    p99, rps = result["ratios"]["p99"], result["ratios"]["rps"]
    errors = sum(m["errors"] for m in result["medians"].values())
    result["targets"] = {"/garbage p99 smart/plain <= %.2f" % TARGET_GC_P99:
                         target(p99, p99 <= TARGET_GC_P99),
                         "/garbage req/s smart/plain >= %.2f" % TARGET_GC_RPS:
                         target(rps, rps >= TARGET_GC_RPS),
                         "/garbage failed requests = 0": target(errors, errors == 0)}
    return result


# -- memory --------------------------------------------------------------------------------

def memory_round(pair, root, args, order):
    env = {"LAZY_CACHE_RECORDS": str(args.records)}
    servers = {"smart": make_server(pair, "smart", root / "smart", args, env,
                                    "fork_worker = 10**9\n"),  # on; only our SIGURG reforks
               "plain": make_server(pair, "plain", root / "plain", args, env)}
    out = {}
    with Servers() as started:
        started.start(*servers.values(), timeout=args.timeout)
        for side in order:  # the same warm-up: /cache until every worker built its cache
            server = servers[side]
            answers = refork_memory.drive(server, 1, 400, args.timeout)
            if not all(any(a["built"] for a in answers[pid]) for pid in server.worker_pids()):
                raise BenchError("%s: a worker did not build its cache: %s" % (side, answers))
            out[side] = {"warm": refork_memory.memory(server)}
        smart = servers["smart"]
        old, t0 = smart.worker_pids(), time.monotonic()
        smart.signal(signal.SIGURG)
        smart.wait_log(r"refork to generation 2 .* done", args.timeout)
        out["smart"]["refork_seconds"] = time.monotonic() - t0
        wait_for(lambda: smart.alive() and len(new := smart.worker_pids()) == args.workers
                 and not new & old, args.timeout, "smart: %d new workers" % args.workers)
        for side in order:  # the same again: one more /cache per (new) worker
            answers = refork_memory.drive(servers[side], 1, 400, args.timeout)
            out[side]["after"] = refork_memory.memory(servers[side])
            if side == "smart":
                templates = [pid for pid, role in refork_memory.tree(smart)
                             if role == "template"]
                out["smart"]["templates"] = templates
                out["smart"]["inherited"] = sum(
                    not a[0]["built"] and [a[0]["built_by"]] == templates
                    for a in answers.values())
    if started.killed:
        raise BenchError("processes outlived the servers: %s" % started.killed)
    return out


def measure_memory(pair, args, workdir):
    rounds = []
    for n in range(args.memory_rounds):
        order = SIDES if n % 2 == 0 else SIDES[::-1]
        r = memory_round(pair, workdir / ("memory-%d" % n), args, order)
        rounds.append(r)
        log("  memory round %d  plain %.0f MiB (workers %.0f)  smart warm %.0f, after the "
            "refork %.0f MiB (workers %.0f); %d of %d workers inherited the cache" % (
                n + 1, r["plain"]["after"]["total_pss"], worker_pss(r["plain"]["after"]),
                r["smart"]["warm"]["total_pss"], r["smart"]["after"]["total_pss"],
                worker_pss(r["smart"]["after"]), r["smart"]["inherited"], args.workers))
        if r["smart"]["inherited"] != args.workers:
            warn("%s memory round %d: %d of %d new workers found the template's cache"
                 % (pair, n + 1, r["smart"]["inherited"], args.workers))

    def med(f):
        return statistics.median(f(r) for r in rounds)
    figures = {
        "plain_total": med(lambda r: r["plain"]["after"]["total_pss"]),
        "plain_workers": med(lambda r: worker_pss(r["plain"]["after"])),
        "plain_ideal": med(ideal),
        "smart_total": med(lambda r: r["smart"]["after"]["total_pss"]),
        "smart_workers": med(lambda r: worker_pss(r["smart"]["after"])),
        "smart_warm_total": med(lambda r: r["smart"]["warm"]["total_pss"]),
        "smart_worker_uss": med(lambda r: statistics.median(r["smart"]["after"]["worker_uss"])),
        "plain_worker_uss": med(lambda r: statistics.median(r["plain"]["after"]["worker_uss"])),
        "refork_seconds": med(lambda r: r["smart"]["refork_seconds"]),
    }
    ratios = {
        "total": med(lambda r: r["smart"]["after"]["total_pss"] /
                     r["plain"]["after"]["total_pss"]),
        "workers": med(lambda r: worker_pss(r["smart"]["after"]) /
                       worker_pss(r["plain"]["after"])),
        "total_to_ideal": med(lambda r: r["smart"]["after"]["total_pss"] / ideal(r)),
        "ideal_to_plain": med(lambda r: ideal(r) / r["plain"]["after"]["total_pss"]),
        "smart_warm_total": med(lambda r: r["smart"]["warm"]["total_pss"] /
                                r["plain"]["warm"]["total_pss"]),
    }
    by_role = rounds[0]["smart"]["after"]["pss_by_role"]
    return {"rounds": rounds, "figures": figures, "ratios": ratios,
            "smart_pss_by_role_round1": by_role,
            "targets": {"whole-server PSS after refork <= %.1fx ideal" % TARGET_IDEAL_RATIO:
                        target(ratios["total_to_ideal"],
                               ratios["total_to_ideal"] <= TARGET_IDEAL_RATIO)}}


def worker_pss(measure):
    return measure["pss_by_role"].get("worker", 0.0)


def ideal(r):
    """Plain's master + its median warmed worker: one copy of everything, one process."""
    after = r["plain"]["after"]
    workers = after["processes"].get("worker", 1)
    return after["total_pss"] - worker_pss(after) + worker_pss(after) / workers


# -- one pair ------------------------------------------------------------------------------

def run_pair(pair, args, workdir):
    result = {}
    log("== %s: %s vs -k %s (%s)" % (pair, PAIRS[pair][1], PAIRS[pair][2], PAIRS[pair][0]))
    if {"spawn", "hello"} & set(args.measures):
        env = {"HEAVY_IMPORT_RECORDS": str(args.heavy_records),
               "HEAVY_IMPORT_SECONDS": str(args.import_seconds)}
        with Servers() as started:
            servers = {}
            for side in SIDES:
                root, config, timeline = workdir / ("spawn-" + side), "", {}
                if args.breakdown:  # spawn_latency.py's hooks: timestamps of each spawn
                    config = spawn_latency.TIMELINE_HOOKS
                    timeline = {"SSBENCH_TIMELINE": str(root.parent / (side + ".timeline"))}
                servers[side] = make_server(pair, side, root, args, {**env, **timeline},
                                            config)
            started.start(*servers.values(), timeout=args.timeout)
            if "spawn" in args.measures:
                result["spawn"] = measure_spawn(servers, args, workdir)
            if "hello" in args.measures:
                result["hello"] = hello_result(measure_load(
                    servers, "/", args.hello_client, args.hello_connections,
                    args.load_rounds, args.hello_seconds, workdir))
        check_killed(started)
    if "gc" in args.measures:
        env = {"OOB_BENCH_RECORDS": str(args.gc_records), "OOB_BENCH_CYCLES": str(args.cycles)}
        with Servers() as started:
            servers = {"plain": make_server(pair, "plain", workdir / "gc-plain", args, env),
                       "smart": make_server(pair, "smart", workdir / "gc-smart", args, env,
                                            "oob_gc = True\n")}
            started.start(*servers.values(), timeout=args.timeout)
            result["gc"] = gc_result(measure_load(
                servers, "/garbage", "python", args.gc_connections, args.load_rounds,
                args.gc_seconds, workdir))
            result["gc"]["smart_log_errors"] = error_lines(servers["smart"])
        check_killed(started)
    if "memory" in args.measures:
        result["memory"] = measure_memory(pair, args, workdir)
    return result


def error_lines(server):
    return [line for line in server.log().splitlines() if "[ERROR]" in line
            or "Traceback" in line][:20]


def check_killed(started):
    if started.killed:
        warn("processes outlived their master: %s" % started.killed)


# -- report ----------------------------------------------------------------------------------

def rows(pair, r):
    """The table rows of one pair: (measure, smart, plain, ratio, target, met)."""
    out = []
    if "spawn" in r:
        s = r["spawn"]
        st = s["stats"]
        out.append(("spawn-to-first-response ms (median)", "%.1f" % st["smart"]["median_ms"],
                    "%.0f" % st["plain"]["median_ms"], "%.0f× faster" % s["ratio"],
                    "≥ %.0f×; smart < %.0f ms" % (TARGET_SPAWN_RATIO, TARGET_SPAWN_MS),
                    all(t["met"] for t in s["targets"].values())))
    if "memory" in r:
        f, q = r["memory"]["figures"], r["memory"]["ratios"]
        out.append(("whole-server PSS MiB after refork / warm-up", "%.0f" % f["smart_total"],
                    "%.0f" % f["plain_total"], "%.2f×" % q["total"],
                    "≤ %.1f× ideal (%.0f MiB): %.2f×" % (TARGET_IDEAL_RATIO, f["plain_ideal"],
                                                       q["total_to_ideal"]),
                    q["total_to_ideal"] <= TARGET_IDEAL_RATIO))
        out.append(("workers-only PSS MiB", "%.0f" % f["smart_workers"],
                    "%.0f" % f["plain_workers"], "%.2f×" % q["workers"], "–", None))
    if "gc" in r:
        g = r["gc"]
        m = g["medians"]
        out.append(("/garbage p99 ms (oob_gc vs none)", "%.2f" % m["smart"]["p99"],
                    "%.2f" % m["plain"]["p99"], "%.2f×" % g["ratios"]["p99"],
                    "≤ %.2f×" % TARGET_GC_P99, g["ratios"]["p99"] <= TARGET_GC_P99))
        out.append(("/garbage req/s", "%.0f" % m["smart"]["rps"], "%.0f" % m["plain"]["rps"],
                    "%.2f×" % g["ratios"]["rps"], "≥ %.2f×" % TARGET_GC_RPS,
                    g["ratios"]["rps"] >= TARGET_GC_RPS))
    if "hello" in r:
        h = r["hello"]
        m = h["medians"]
        out.append(("hello req/s", "%.0f" % m["smart"]["rps"], "%.0f" % m["plain"]["rps"],
                    "%.3f×" % h["ratios"]["rps"], "≥ %.2f×" % TARGET_HELLO_RPS,
                    h["ratios"]["rps"] >= TARGET_HELLO_RPS))
    return out


def report(results, args):
    print("\n%d workers per server; rounds alternate plain, smartspawn; ratios are medians "
          "of per-round ratios (spawn: plain/smart, others: smart/plain)\n" % args.workers)
    print("| pair | measure | smartspawn | plain | ratio | target | |\n"
          "|---|---|---:|---:|---:|---|---|")
    missed = []
    for pair, r in results["pairs"].items():
        for measure, smart, plain, ratio, goal, met in rows(pair, r):
            print("| %s | %s | %s | %s | %s | %s | %s |" % (
                pair, measure, smart, plain, ratio, goal,
                "" if met is None else ("met" if met else "**MISSED**")))
        for measure in r.values():
            missed += ["%s: %s" % (pair, name) for name, t in measure["targets"].items()
                       if not t["met"]]
    print()
    for pair, r in results["pairs"].items():
        if "spawn" in r:
            st = r["spawn"]["stats"]
            print("%s spawn: smart %.1f ms (min %.1f, max %.1f), plain %.0f ms (min %.0f, max "
                  "%.0f); per-round ratio %.0f-%.0f×; app imports seen: smart %d, plain %d; "
                  "new worker USS: smart %.1f, plain %.1f MB" % (
                      pair, st["smart"]["median_ms"], st["smart"]["min_ms"],
                      st["smart"]["max_ms"], st["plain"]["median_ms"], st["plain"]["min_ms"],
                      st["plain"]["max_ms"], *r["spawn"]["ratio_range"],
                      st["smart"]["distinct_app_imports"], st["plain"]["distinct_app_imports"],
                      st["smart"]["worker_uss_mb_median"] or 0,
                      st["plain"]["worker_uss_mb_median"] or 0))
            phases = {side: st[side]["phases_ms_median"] for side in SIDES}
            if any(phases.values()):
                print("%s spawn phases, medians ms: %s" % (pair, "; ".join(
                    "%s: %s" % (side, ", ".join("%s %s" % (name, "?" if v is None else
                                                            "%.1f" % v)
                                                for name, v in (phases[side] or {}).items()))
                    for side in SIDES)))
        if "memory" in r:
            f = r["memory"]["figures"]
            print("%s memory: smart before the refork %.0f MiB (%.2f× plain); refork %.2f s; "
                  "worker USS smart %.1f, plain %.1f MiB; smart PSS by role (round 1): %s" % (
                      pair, f["smart_warm_total"], r["memory"]["ratios"]["smart_warm_total"],
                      f["refork_seconds"], f["smart_worker_uss"], f["plain_worker_uss"],
                      ", ".join("%s %.0f" % kv for kv in
                                sorted(r["memory"]["smart_pss_by_role_round1"].items()))))
        for name in ("gc", "hello"):
            if name in r:
                g = r[name]
                print("%s %s: p50 ×%.2f, p99.9 ×%.2f, server CPU per request ×%.2f; "
                      "per-round req/s ratio %.2f-%.2f; failed: smart %d, plain %d" % (
                          pair, name, g["ratios"]["p50"], g["ratios"]["p999"],
                          g["ratios"]["cpu_us"], *g["ratio_ranges"]["rps"],
                          g["medians"]["smart"]["errors"], g["medians"]["plain"]["errors"]))
    print("\ntargets missed: %s" % (", ".join(missed) if missed else "none"))
    for message in WARNINGS:
        print("WARNING: %s" % message)
    return missed


def environment(args):
    from importlib.metadata import version
    versions = {}
    for name in ("gunicorn", "fastapi", "starlette", "uvicorn", "uvicorn-worker", "gevent",
                 "psutil"):
        try:
            versions[name] = version(name)
        except Exception:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_at_start": list(args.loadavg_at_start),
            "loadavg_at_end": list(os.getloadavg()), "packages": versions,
            "wrk": shutil.which("wrk"), "gunicorn_smartspawn": product_source()}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer and shorter rounds (~3 min instead of ~7)")
    parser.add_argument("--pairs", default=",".join(PAIRS),
                        help="comma-separated, of %s" % ", ".join(PAIRS))
    parser.add_argument("--measures", default=",".join(MEASURES),
                        help="comma-separated, of %s" % ", ".join(MEASURES))
    parser.add_argument("--workers", type=int, default=2, help="workers per server (2)")
    parser.add_argument("--spawn-rounds", type=int, help="measured spawn rounds (7; quick 3)")
    parser.add_argument("--spawn-warmup", type=int, default=1, help="unmeasured ones (1)")
    parser.add_argument("--load-rounds", type=int, help="hello and gc rounds (5; quick 2)")
    parser.add_argument("--hello-seconds", type=int, help="s per hello run (3; quick 2)")
    parser.add_argument("--gc-seconds", type=int, help="s per /garbage run (4; quick 3)")
    parser.add_argument("--memory-rounds", type=int, help="memory rounds (3; quick 1)")
    parser.add_argument("--hello-connections", type=int, default=8, help="wrk -c (8)")
    parser.add_argument("--hello-client", choices=("wrk", "python"),
                        default="wrk" if loadgen.have_wrk() else "python",
                        help="wrk when installed, else Python client processes")
    parser.add_argument("--gc-connections", type=int, default=4,
                        help="Python client processes on /garbage (4)")
    parser.add_argument("--heavy-records", type=int, default=170000,
                        help="heavy_import's records (spawn, hello servers; 170000)")
    parser.add_argument("--import-seconds", type=float, default=1.0,
                        help="heavy_import's minimum import time (1.0)")
    parser.add_argument("--gc-records", type=int, default=250000,
                        help="oob_app's heap records (gc servers; 250000)")
    parser.add_argument("--cycles", type=int, default=1000, help="rows per /garbage (1000)")
    parser.add_argument("--records", type=int, default=105000,
                        help="lazy_cache's records (memory servers; 105000: ~100 MB)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each wait")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target is missed (2: the run failed)")
    parser.add_argument("--breakdown", action="store_true",
                        help="spawn: add spawn_latency.py's hooks (pre_fork, post_fork, "
                        "post_worker_init) and split the latency into phases; they add "
                        "file writes to the measured path")
    parser.add_argument("--plots", metavar="DIR",
                        help="write eventloop.png and eventloop_pss.png there")
    parser.add_argument("--from-json", metavar="PATH",
                        help="run nothing: print the report (and --plots) of a --json file")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the servers' directory and print its path")
    args = parser.parse_args(argv)
    defaults = {"spawn_rounds": (7, 3), "load_rounds": (5, 2), "hello_seconds": (3, 2),
                "gc_seconds": (4, 3), "memory_rounds": (3, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.pairs = [p for p in args.pairs.split(",") if p]
    args.measures = [m for m in args.measures.split(",") if m]
    unknown = set(args.pairs) - set(PAIRS) | set(args.measures) - set(MEASURES)
    if unknown:
        parser.error("unknown pair or measure: %s" % ", ".join(sorted(unknown)))
    return args


def plot(results, directory):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if plots.eventloop(results["pairs"], directory / "eventloop.png",
                       directory / "eventloop_pss.png"):
        log("plots written to %s" % directory)
    else:
        log(plots.MISSING)


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        args.workers = results["config"]["workers"]
        WARNINGS.extend(results.get("warnings", ()))
        missed = report(results, args)
        if args.plots:
            plot(results, args.plots)
        return 1 if args.check and missed else 0
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    args.loadavg_at_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="ssbench-eventloop-"))
    started, ok, missed = time.monotonic(), False, []
    results = {"benchmark": "eventloop", "pairs": {}}
    try:
        for pair in args.pairs:
            results["pairs"][pair] = run_pair(pair, args, workdir / pair)
        results.update(
            config={k: v for k, v in vars(args).items() if k != "loadavg_at_start"},
            elapsed_s=time.monotonic() - started, environment=environment(args),
            targets={"spawn_ratio_min": TARGET_SPAWN_RATIO, "spawn_smart_ms_max":
                     TARGET_SPAWN_MS, "pss_to_ideal_max": TARGET_IDEAL_RATIO,
                     "gc_p99_ratio_max": TARGET_GC_P99, "gc_rps_ratio_min": TARGET_GC_RPS,
                     "hello_rps_ratio_min": TARGET_HELLO_RPS})
        missed = report(results, args)
        results["missed"], results["warnings"] = missed, WARNINGS
        write_json(args.json, results)
        if args.plots:
            plot(results, args.plots)
        ok = True
    except (BenchError, OSError) as exc:  # OSError: a request failed or timed out
        print("benchmark failed: %r" % exc if isinstance(exc, OSError)
              else "benchmark failed: %s" % exc, file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        out = subprocess.run(["ps", "-e", "-o", "pid=,sid=,args="], capture_output=True,
                             text=True).stdout
        left = [line for line in out.splitlines() if int(line.split()[1]) in SESSIONS]
        print("processes left behind (ps): %s; run time %.0f s"
              % (left or "none", time.monotonic() - started))
        if ok and not left and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("server logs kept in %s" % workdir)
    if not ok or left:
        return 2
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
