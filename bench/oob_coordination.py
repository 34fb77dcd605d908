#!/usr/bin/env python
"""Out-of-band work coordinated by the master (issue 26): two measurements, side by side.

1. coordination: two ``gunicorn -k smartspawn.Worker --workers 4`` servers with
   ``oob_gc = True`` run bench/apps/oob_app.py (the app of oob_latency.py: a ~1 M-object
   heap, cyclic garbage on every GET /garbage) under saturating load (--connections Python
   client processes, back to back, default 2 x workers): A ``oob_concurrency = 1``
   (coordinated; also the default for 4 workers), B ``oob_concurrency = 4`` (every worker
   may collect at once, as without coordination). Runs alternate A B A B after one
   unmeasured warm-up run each. Per run: req/s, p50 / p99 / p99.9 latency (every
   request's own), and the master's ``oob_most_at_once`` and ``oob_grants`` from the
   state file ``smartspawn status`` reads (after each run, once the master has rewritten
   it; most-at-once is the server's maximum so far, as the master saw it at each turn).
   Ratios A/B are per round; the report gives their median and range. Target: most at
   once never above the server's oob_concurrency.

2. spawn first: ``--workers 1``; GET /work answers with the work header, and the hook
   sleeps 2 s (--work-seconds), then appends its start and end (CLOCK_MONOTONIC) to a
   file. A paced open-loop probe (--probes clients, --rate req/s in all, GET /hello) runs
   throughout; the requests due while the work ran are the ones measured. Smartspawn's
   hook is ``on_oob_work`` (the master spawns a worker first: "spawning one first" in its
   log); plain gunicorn has no out-of-band work, so its closest analogue is a
   ``post_request`` hook that sleeps after /work has been answered: its lone worker
   accepts nothing meanwhile. Runs alternate plain, smartspawn; before each smartspawn
   run but the first, the extra worker is waited out (it leaves 10 s after the work).
   Target: smartspawn's requests during the work all under 50 ms.

    python -m bench.oob_coordination [--quick] [--rounds N] [--seconds S]
        [--connections C] [--json PATH] [--check]

Every wait has a deadline; servers are stopped by pid (bench/server.py).
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as `python bench/oob_coordination.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loadgen
from gunicorn_smartspawn.cli import status
from bench.server import (SMARTSPAWN, BenchError, Server, Servers, run_in_tmpdir, wait_for,
                          write_json)

FIGURES = ("rps", "p50", "p99", "p999")
TARGET_DURING_MS = 50.0
EXTRA_LINGER = 10.0  # s: master/outofband.py's, after which the extra worker leaves

# The 2 s of work, timed where it runs; `guard` skips the requests that do not ask for it.
WORK_HOOK = """
import time


def {hook}({params}):
    {guard}
    started = time.monotonic()
    time.sleep({seconds})
    with open({path!r}, "a") as f:
        f.write("%f %f\\n" % (started, time.monotonic()))
"""


# -- 1. coordination ------------------------------------------------------------------------

def oob_stats(server):
    """The master's out-of-band counters, from the state file `smartspawn status` reads
    (its --json report leaves these fields out: read with the CLI's own load_state)."""
    time.sleep(1.2)  # the master rewrites its state file at most once a second
    try:
        found = status.load_state(server.proc.pid)
    except status.StatusError as exc:
        raise BenchError("%s: %s" % (server.name, exc)) from None
    return {k: found[k] for k in ("oob_concurrency", "oob_grants", "oob_most_at_once")}


def coordination(args, tmp):
    env = {"OOB_BENCH_RECORDS": str(args.records)}
    servers = [Server("%s oob_concurrency=%d" % (label, n), tmp / label, "oob_app:app",
                      SMARTSPAWN, "oob_gc = True\noob_concurrency = %d\n" % n, args.workers,
                      env, timeout=120)
               for label, n in (("A", 1), ("B", args.workers))]
    runs = {server.name: [] for server in servers}
    with Servers() as started:
        started.start(*servers)
        grants = {}
        for server in servers:  # warm-up, not counted
            loadgen.run_python(server.port, "/garbage", 0, args.connections, args.warmup)
            grants[server.name] = oob_stats(server)["oob_grants"]
        for round_no in range(args.rounds):
            for server in servers:
                result = loadgen.run_python(server.port, "/garbage", 0, args.connections,
                                            args.seconds)
                server.alive()
                stats = oob_stats(server)
                result.update(stats, grants=stats["oob_grants"] - grants[server.name])
                grants[server.name] = stats["oob_grants"]
                runs[server.name].append(result)
                print("/garbage round %d  %-20s %6.0f req/s  p50 %7.2f  p99 %7.2f  p99.9 "
                      "%7.2f ms  grants %4d  most at once %d (limit %d)  errors %d" % (
                          round_no + 1, server.name, result["rps"], result["p50"],
                          result["p99"], result["p999"], result["grants"],
                          stats["oob_most_at_once"], stats["oob_concurrency"],
                          result["errors"]), flush=True)
    return summarize_coordination(runs)


def summarize_coordination(runs):
    (a, a_runs), (b, b_runs) = runs.items()
    arms = {name: {**{k: statistics.median(r[k] for r in rs) for k in FIGURES},
                   "errors": sum(r["errors"] for r in rs),
                   "grants": sum(r["grants"] for r in rs),
                   "most_at_once": max(r["oob_most_at_once"] for r in rs),
                   "oob_concurrency": rs[-1]["oob_concurrency"]}
            for name, rs in runs.items()}
    ratios = {}
    for k in FIGURES:
        per_round = [x[k] / y[k] for x, y in zip(a_runs, b_runs, strict=True)]
        ratios[k] = {"median": statistics.median(per_round), "min": min(per_round),
                     "max": max(per_round)}
    return {"runs": runs, "arms": arms, "ratio_of": "%s / %s" % (a, b),
            "ratios": ratios}


# -- 2. spawn first -------------------------------------------------------------------------

def work_server(label, tmp, smart, args, env):
    path = tmp / ("work-%s.txt" % label)
    hook = WORK_HOOK.format(
        hook="on_oob_work" if smart else "post_request",
        params="worker" if smart else "worker, req, environ, resp",
        guard="pass" if smart else 'if req.path != "/work":\n        return',
        seconds=args.work_seconds, path=str(path))
    server = Server("smartspawn on_oob_work" if smart else "plain post_request",
                    tmp / label, "oob_app:app", SMARTSPAWN if smart else [], hook, 1, env,
                    timeout=120)
    server.work_file = path
    return server


def work_spans(server):
    if not server.work_file.exists():
        return []
    return [tuple(map(float, line.split())) for line in server.work_file.read_text().split("\n")
            if line]


def one_work(server, args):
    """Probe load, GET /work, wait for the work to end; -> figures of the requests due
    while it ran."""
    done, since = len(work_spans(server)), len(server.log())
    load = loadgen.PythonLoad(server.port, "/hello", connections=args.probes,
                              max_seconds=args.work_seconds + 40, rate=args.rate).start()
    try:
        time.sleep(0.5)
        asked = time.monotonic()
        status, _ = server.get("/work")
        if status != 200:
            raise BenchError("%s: GET /work -> HTTP %s" % (server.name, status))
        started, ended = wait_for(lambda: work_spans(server)[done:],
                                  args.work_seconds + 30, "the work of %s" % server.name)[0]
        time.sleep(0.3)
    finally:
        samples = load.stop()
    during = [s for s in samples if started <= s[0] < ended]
    latencies = sorted((end - start) * 1e3 for start, end, ok in during if ok)
    if not latencies:
        raise BenchError("%s: no request was due during the work" % server.name)
    return {"requests": len(latencies), "failed": sum(not ok for _, _, ok in during),
            "p50": statistics.median(latencies), "max": latencies[-1],
            "asked_to_work_ms": (started - asked) * 1e3, "work_s": ended - started,
            "spawned_first": "spawning one first" in server.log()[since:]}


def spawn_first(args, tmp):
    env = {"OOB_BENCH_RECORDS": str(args.records)}
    servers = [work_server("plain", tmp, False, args, env),
               work_server("smart", tmp, True, args, env)]
    runs = {server.name: [] for server in servers}
    with Servers() as started:
        started.start(*servers)
        for round_no in range(args.rounds):
            for server in servers:
                server.wait_workers(EXTRA_LINGER + 30)  # the extra worker has left
                result = one_work(server, args)
                runs[server.name].append(result)
                print("work round %d  %-22s %3d requests during %.2f s: median %7.2f  max "
                      "%7.2f ms  failed %d  asked->work %6.0f ms  spawned first: %s" % (
                          round_no + 1, server.name, result["requests"], result["work_s"],
                          result["p50"], result["max"], result["failed"],
                          result["asked_to_work_ms"], result["spawned_first"]), flush=True)
    arms = {name: {"requests": sum(r["requests"] for r in rs),
                   "failed": sum(r["failed"] for r in rs),
                   "p50": statistics.median(r["p50"] for r in rs),
                   "max": max(r["max"] for r in rs),
                   "asked_to_work_ms": statistics.median(r["asked_to_work_ms"] for r in rs),
                   "spawned_first": sum(r["spawned_first"] for r in rs)}
            for name, rs in runs.items()}
    return {"runs": runs, "arms": arms}


# -- the benchmark --------------------------------------------------------------------------

def targets(coord, work):
    out = {}
    for name, arm in coord["arms"].items():
        out["%s: most at once <= %d" % (name, arm["oob_concurrency"])] = {
            "value": arm["most_at_once"], "met": arm["most_at_once"] <= arm["oob_concurrency"]}
    smart = work["arms"]["smartspawn on_oob_work"]
    out["during the work: max < %.0f ms" % TARGET_DURING_MS] = {
        "value": smart["max"], "met": smart["max"] < TARGET_DURING_MS and not smart["failed"]}
    return out


def report(result):
    coord, work = result["coordination"], result["spawn_first"]
    print("\ncoordination: %d workers, %d connections, %d rounds of %d s, alternating; "
          "medians" % (result["args"]["workers"], result["args"]["connections"],
                       result["args"]["rounds"], result["args"]["seconds"]))
    print("  %-20s %8s %8s %8s %9s %7s %7s %12s" % (
        "arm", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "grants", "most at once"))
    for name, arm in coord["arms"].items():
        print("  %-20s %8.0f %8.2f %8.2f %9.2f %7d %7d %9d / %d" % (
            name, *(arm[k] for k in FIGURES), arm["errors"], arm["grants"],
            arm["most_at_once"], arm["oob_concurrency"]))
    print("  %s per round: median (min-max)" % coord["ratio_of"])
    for k in FIGURES:
        r = coord["ratios"][k]
        print("    %-5s %.3f (%.3f-%.3f)" % (k, r["median"], r["min"], r["max"]))
    print("\nspawn first: workers = 1, %.1f s of work; requests due during it "
          "(%d probes, %.0f req/s)" % (result["args"]["work_seconds"], result["args"]["probes"],
                                       result["args"]["rate"]))
    for name, arm in work["arms"].items():
        print("  %-22s %4d requests  median %7.2f  max %8.2f ms  failed %d  asked->work "
              "%6.0f ms  spawned first %d of %d" % (
                  name, arm["requests"], arm["p50"], arm["max"], arm["failed"],
                  arm["asked_to_work_ms"], arm["spawned_first"], result["args"]["rounds"]))
    print("\ntargets")
    for name, t in result["targets"].items():
        print("  %-42s %8.2f  %s" % (name, t["value"], "met" if t["met"] else "MISSED"))


def run(args, tmp):
    coord = coordination(args, tmp / "coordination")
    work = spawn_first(args, tmp / "spawn_first")
    result = {"args": vars(args), "loadavg": list(os.getloadavg()),
              "coordination": coord, "spawn_first": work, "targets": targets(coord, work)}
    report(result)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 4 s, warm-up 2 s (~45 s in all)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per load run (10)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds (3)")
    parser.add_argument("--workers", type=int, default=4, help="workers, part 1 (4)")
    parser.add_argument("--connections", type=int, help="client processes, part 1 "
                        "(default: 2 x workers)")
    parser.add_argument("--records", type=int, default=250000, help="heap records (250000)")
    parser.add_argument("--work-seconds", type=float, default=2.0,
                        help="the hook's sleep, part 2 (2.0)")
    parser.add_argument("--probes", type=int, default=2, help="probe clients, part 2 (2)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="probe requests per second in all, part 2 (50)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 4, 2
    args.connections = args.connections or 2 * args.workers
    result = run_in_tmpdir("ssbench-oobcoord-", run, args)
    if result is None:
        return 2
    write_json(args.json, result)
    missed = [name for name, t in result["targets"].items() if not t["met"]]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
