#!/usr/bin/env python
"""p99 latency while workers are recycled (max_requests) vs steady: plain gunicorn vs smartspawn.

App: bench/apps/heavy_import.py (a ~140 MB table and ~0.7 s of real CPU at import,
--import-seconds), endpoint GET / (cheap: "ok"), so that replacing a worker has a real
cost. Four servers run side by side, each `--workers 4` on 127.0.0.1:0 with its own
control socket:

  plain steady        gunicorn (sync workers, each imports the app), max_requests = 0
  plain recycling     the same with max_requests = 200, max_requests_jitter = 50
  smartspawn steady   gunicorn -k smartspawn.Worker, max_requests = 0
  smartspawn recycling  the same with max_requests = 200, max_requests_jitter = 50
                      (a worker at its limit keeps serving until its replacement, forked
                      from the preloader, serves: spawn before retire)

Load: loadgen's Python client, --workers client processes (concurrency = workers), one
request per connection, every request's own latency (no coordinated-omission
correction). After one unmeasured warm-up run per server, each round runs the four
windows of --seconds (8) in turn, in alternating order (plain steady, smartspawn steady,
plain recycling, smartspawn recycling, then the reverse); before each window the server
must be idle (its processes used < 5 % of a CPU for 0.5 s), so a plain worker still
importing after the previous window does not slow the next one. Workers booted during a
window are counted from the log ("Booting worker").

Reported per kind (plain, smartspawn): steady and recycling p99 (medians over rounds),
the median of the per-round ratios recycling/steady, p99.9, max, requests/s, failed
requests (non-2xx and connection errors) and workers booted per window. A client that
waits for a stalled server sends fewer requests meanwhile, so a stall shows in max and
requests/s more than in p99 (plain gunicorn's re-imports). Targets (--check exits 1
when one is missed): smartspawn's recycling p99 <= 1.2 x its steady p99, and 0 failed
requests for smartspawn. Plain gunicorn's ratio is shown beside it, not checked.

    python bench/recycle_latency.py [--quick] [--rounds R] [--seconds S] [--json PATH]
                                    [--check]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil

if not __package__:  # run as `python bench/recycle_latency.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loadgen
from bench.server import (SMARTSPAWN, BenchError, Server, Servers, product_source,
                          run_in_tmpdir, wait_for, write_json)

KINDS = {"plain": [], "smartspawn": SMARTSPAWN}  # name -> gunicorn args
WINDOWS = ("steady", "recycling")
RECYCLING = "max_requests = %(max_requests)d\nmax_requests_jitter = %(jitter)d\n"
TARGET_RATIO = 1.2


def make_servers(args, workdir):
    """{(kind, window): Server}, in the order of a round."""
    env = {"HEAVY_IMPORT_SECONDS": str(args.import_seconds)}
    config = {"steady": "", "recycling": RECYCLING % vars(args)}
    return {(kind, window): Server("%s %s" % (kind, window), workdir / ("%s-%s" % (
        kind, window)), "heavy_import:app", gunicorn_args, config[window], args.workers, env)
            for window in WINDOWS for kind, gunicorn_args in KINDS.items()}


def tree_cpu(server):
    """CPU seconds used so far by the live processes of the server's session."""
    total = 0.0
    for proc in server.session():
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def wait_idle(server, timeout):
    """Wait until the server's processes use < 5 % of a CPU over 0.5 s."""
    def idle():
        before = tree_cpu(server)
        time.sleep(0.5)
        return tree_cpu(server) - before < 0.025

    wait_for(lambda: server.alive() and idle(), timeout, "%s to be idle" % server.name, 0)


def window(server, args):
    """One measured window -> loadgen figures + the workers booted meanwhile."""
    wait_idle(server, args.timeout)
    since = len(server.log())
    result = loadgen.run_python(server.port, "/", 0, args.workers, args.seconds)
    server.alive()
    result["booted"] = server.log()[since:].count("Booting worker")
    return result


def run(args, workdir):
    servers = make_servers(args, workdir)
    runs = {key: [] for key in servers}
    with Servers() as started:
        started.start(*servers.values(), timeout=args.timeout)
        for server in servers.values():
            loadgen.run_python(server.port, "/", 0, args.workers, 2)  # warm-up
        for round_no in range(args.rounds):
            order = list(servers) if round_no % 2 == 0 else list(servers)[::-1]
            for key in order:
                result = window(servers[key], args)
                runs[key].append(result)
                print("round %d %-22s %6.0f req/s  p50 %6.2f  p99 %7.2f  max %7.1f ms  "
                      "failed %d  booted %d" % (round_no + 1, servers[key].name,
                                                result["rps"], result["p50"], result["p99"],
                                                result["max"], result["errors"],
                                                result["booted"]), flush=True)
    if started.killed:
        raise BenchError("processes outlived their server: %s" % started.killed)
    return {"benchmark": "recycle_latency", "args": vars(args),
            "revision": product_source()["git"],
            "runs": {"%s %s" % key: value for key, value in runs.items()}}


def summarize(result):
    """Per kind: medians, the ratio, failures; prints the table. -> missed targets."""
    runs, summary = result["runs"], {}
    for kind in KINDS:
        steady, recycling = runs[kind + " steady"], runs[kind + " recycling"]
        summary[kind] = {
            **{"%s_%s" % (w, k): statistics.median(r[k] for r in rs)
               for w, rs in (("steady", steady), ("recycling", recycling))
               for k in ("p99", "p999", "max", "rps", "booted")},
            "p99_ratio": statistics.median(r["p99"] / s["p99"]
                                           for s, r in zip(steady, recycling, strict=True)),
            "failed": sum(r["errors"] for r in steady + recycling)}
    args = result["args"]
    print("\n%d workers, concurrency %d, GET / of heavy_import (%.1f s import), "
          "max_requests %d + jitter %d; %d round(s) of %d s windows; medians; "
          "gunicorn_smartspawn %s\n" % (args["workers"], args["workers"], args["import_seconds"],
                                        args["max_requests"], args["jitter"], args["rounds"],
                                        args["seconds"], result["revision"]))
    print("| server | steady p99 ms | recycling p99 ms | recycling / steady | p99.9 steady / "
          "recycling | max steady / recycling | req/s steady / recycling | workers booted "
          "per window | failed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, s in summary.items():
        print("| %s | %.2f | %.2f | %.2f | %.1f / %.1f | %.0f / %.0f | %.0f / %.0f | %.0f | %d |"
              % (kind, s["steady_p99"], s["recycling_p99"], s["p99_ratio"], s["steady_p999"],
                 s["recycling_p999"], s["steady_max"], s["recycling_max"], s["steady_rps"],
                 s["recycling_rps"], s["recycling_booted"], s["failed"]))
    smart = summary["smartspawn"]
    targets = {"smartspawn recycling p99 <= %.1f x steady" % TARGET_RATIO:
               (smart["p99_ratio"], smart["p99_ratio"] <= TARGET_RATIO),
               "smartspawn failed requests = 0": (smart["failed"], smart["failed"] == 0)}
    print("\n| target | value | |\n|---|---:|---|")
    for label, (value, met) in targets.items():
        print("| %s | %.2f | %s |" % (label, value, "met" if met else "MISSED"))
    print("(plain gunicorn: recycling / steady p99 = %.2f, not a target)"
          % summary["plain"]["p99_ratio"])
    result.update(summary=summary, targets={
        label: {"value": value, "met": met} for label, (value, met) in targets.items()})
    return [label for label, (_, met) in targets.items() if not met]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 4 s windows")
    parser.add_argument("--rounds", type=int, help="rounds of the four windows (3)")
    parser.add_argument("--seconds", type=int, help="seconds per window (8)")
    parser.add_argument("--workers", type=int, default=4, help="workers = clients (4)")
    parser.add_argument("--max-requests", type=int, default=200, help="recycling (200)")
    parser.add_argument("--jitter", type=int, default=50, help="max_requests_jitter (50)")
    parser.add_argument("--import-seconds", type=float, default=0.7,
                        help="CPU time of the app's import, s (0.7)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of waits (60)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (4 if args.quick else 8)
    result = run_in_tmpdir("ssbench-recycle-", run, args)
    if result is None:
        return 2
    missed = summarize(result)
    write_json(args.json, result)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
