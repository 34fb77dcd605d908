#!/usr/bin/env python
"""Refork and HUP under load: failed requests and latency during the event.

One server, `gunicorn -k smartspawn.Worker -w 2` with `fork_worker = 10**9` (on; only our
SIGURG reforks), runs apps/flask_app.py. For each event (refork, HUP, refork, HUP, ...):

1. Python load clients (loadgen.PythonLoad: one process per worker, GET /product/{id},
   every request's start and end recorded) start; after a ramp, a steady window;
2. the event: SIGURG (refork) or SIGHUP (a new preloader imports the app, then its
   workers replace the old ones); it is over when the log says
   "refork to generation N ... done", or, for HUP, "Reload to generation N (HUP) done"
   (none of the old workers is left). Two more kinds are no event of the server's but
   the least work any such event does, with none of smartspawn's: "refork floor",
   bench/fork_floor.py, a process outside the server that imported the same app, forks
   2 children one at a time, each answering one request and exiting (a refork's forks,
   the new workers' copy-on-write faults, the old workers' exits); "hup floor", a new
   such process imports the app, then does the same (a reload imports the new code).
   Their p99 is a reference for what this machine allows (not a strict bound:
   smartspawn forks its standbys ahead of need, partly before the event); a floor's
   window lasts as long as the event it stands for in the same round (as many
   requests: a p99 over 30 requests would be their maximum). Two more floors do the same
   the way smartspawn forks ("refork double-fork floor", "hup double-fork floor"): a
   stand-in more, each child by a double fork, so that the master stays its parent;
3. a short tail, then the load stops.

Reported per event: failed requests during the whole load run (non-2xx answers and
connection errors; target 0), p50/p99/max and requests/s of the requests that started in
the steady window and of those that started during the event, the event's duration and
the server's ERROR lines. The Python client is used (not wrk) because it keeps every
request's timestamps: the event's window can be cut out exactly.

    python -m bench.events [--quick] [--rounds N] [--json PATH]
"""
import argparse
import re
import signal
import statistics
import sys
import time

from bench import loadgen
from bench.fork_floor import Floor
from bench.server import (SMARTSPAWN, BenchError, Server, Servers, run_in_tmpdir,
                          write_json)

WORKERS = 2
PRODUCTS = 60000
PATH = "/product/{id}"
RAMP = 0.5   # s of load before the steady window
TAIL = 0.5   # s of load after the event
BIN = 0.1    # s per bin of the timeline kept for the plots


KINDS = ("refork", "hup", "refork floor", "hup floor", "refork double-fork floor",
         "hup double-fork floor")


def start_floor(double=False):
    """bench/fork_floor.py on the events' app, ready for its "go" lines."""
    return Floor("flask_app:app", PATH, PRODUCTS, WORKERS,
                 {"FLASK_APP_PRODUCTS": str(PRODUCTS)}, double)


def trigger(server, kind, before, timeout, floors):
    """Send the event's signal (or a floor its "go") and wait until it is over.
    `floors`: the refork floors, started: {double: Floor}."""
    since = len(server.log())
    double = "double-fork" in kind
    if kind.startswith("refork") and kind.endswith("floor"):
        floors[double].go()
        return since
    if kind.endswith("floor"):  # HUP's: a new process imports the app, then forks
        fresh = start_floor(double)
        try:
            fresh.go()
        finally:
            fresh.stop()
        return since
    if kind == "refork":
        server.signal(signal.SIGURG)
        match = server.wait_log(r"refork to generation \d+ \(.*\) (done|abandoned)",
                                timeout, since)
        if match.group(1) != "done":
            raise BenchError("the refork was abandoned:\n%s" % server.log()[since:])
    else:
        server.signal(signal.SIGHUP)
        server.wait_log(r"Reload to generation \d+ \(HUP\) done", timeout, since)
    server.wait_workers(timeout, exclude=before)
    return since


def timeline(samples, first, origin, end):
    """Per BIN s of [first, end), t from `origin`: [t, requests, p50 ms, max ms, failed]."""
    bins = {}
    for start, stop, ok in samples:
        if first <= start < end:
            bins.setdefault(int((start - origin) // BIN), []).append(((stop - start) * 1e3, ok))
    rows = []
    for index, rs in sorted(bins.items()):
        ms = sorted(m for m, ok in rs if ok) or [0.0]
        rows.append([round(index * BIN, 2), len(rs), round(statistics.median(ms), 2),
                     round(ms[-1], 2), sum(not ok for _, ok in rs)])
    return rows


def measure_event(server, kind, args, floors, seconds=0.0):
    """`seconds`: the least length of the event's window (a floor's: as long as the
    event it stands for, its requests as many)."""
    before = server.worker_pids()
    load = loadgen.PythonLoad(server.port, PATH, PRODUCTS, WORKERS,
                              max_seconds=RAMP + args.steady + args.timeout + TAIL + 5)
    load.start()
    try:
        time.sleep(RAMP)
        steady_start = time.monotonic()
        time.sleep(args.steady)
        event_start = time.monotonic()
        since = trigger(server, kind, before, args.timeout, floors)
        time.sleep(max(0.0, event_start + seconds - time.monotonic()))
        event_end = time.monotonic()
        time.sleep(TAIL)
    finally:
        samples = load.stop()
    errors = [line for line in server.log()[since:].splitlines()
              if re.search(r"\[(ERROR|CRITICAL)\]", line)]
    return {"event": kind, "seconds": event_end - event_start,
            "requests": len(samples), "failed": sum(not ok for _, _, ok in samples),
            "steady": loadgen.summarize(samples, steady_start, event_start),
            "during": loadgen.summarize(samples, event_start, event_end),
            "log_errors": errors,
            "timeline": timeline(samples, steady_start, event_start, event_end + TAIL),
            "old_workers": sorted(before), "new_workers": sorted(server.worker_pids())}


def summarize(events):
    out = {}
    for kind in KINDS:
        runs = [e for e in events if e["event"] == kind]
        out[kind] = {
            "n": len(runs), "failed": sum(e["failed"] for e in runs),
            "requests": sum(e["requests"] for e in runs),
            "seconds": statistics.median(e["seconds"] for e in runs),
            **{"%s_%s" % (window, key): statistics.median(e[window][key] for e in runs)
               for window in ("steady", "during") for key in ("p50", "p99", "max", "rps")},
            "p99_ratio": statistics.median(e["during"]["p99"] / e["steady"]["p99"]
                                           for e in runs),
            "log_errors": sum(len(e["log_errors"]) for e in runs)}
    return out


def run(args, workdir):
    with Servers() as started:
        server = started.start(Server("events", workdir / "events", "flask_app:app",
                                      SMARTSPAWN, "fork_worker = 10**9\n", WORKERS,
                                      {"FLASK_APP_PRODUCTS": str(PRODUCTS)}))
        events = []
        floors = {}
        try:
            floors[False] = start_floor()
            floors[True] = start_floor(double=True)
            for round_no in range(args.rounds):
                lengths = {}
                for kind in KINDS:
                    event = measure_event(server, kind, args, floors,
                                          lengths.get(kind.split()[0], 0.0))
                    lengths[kind] = event["seconds"]
                    events.append(event)
                    print("round %d %-6s %5.2f s  failed %d of %d  p99 steady %6.2f ms, "
                          "during %7.2f ms  log errors %d" % (
                              round_no + 1, kind, event["seconds"], event["failed"],
                              event["requests"], event["steady"]["p99"],
                              event["during"]["p99"], len(event["log_errors"])), flush=True)
        finally:
            for floor in floors.values():
                floor.stop()
    if started.killed:
        raise BenchError("processes outlived the server: %s" % started.killed)
    summary = summarize(events)
    return {"benchmark": "events", "client": "python", "workers": WORKERS,
            "connections": WORKERS, "path": PATH, "rounds": args.rounds,
            "steady_seconds": args.steady, "summary": summary, "events": events,
            "targets": {"%s failed requests" % kind: {
                "value": summary[kind]["failed"], "target": "= 0",
                "met": summary[kind]["failed"] == 0} for kind in ("refork", "hup")}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s steady windows")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of refork + HUP + floor (3)")
    parser.add_argument("--steady", type=float, default=3.0,
                        help="seconds of steady load before each event (3)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="deadline for an event to complete, s (60)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steady = 1, 2.0
    result = run_in_tmpdir("ssbench-events-", run, args)
    if result is None:
        return 2
    for kind, s in result["summary"].items():
        print("%-6s failed %d of %d; p99 steady %.2f ms, during %.2f ms (x%.2f); "
              "%.2f s; log errors %d" % (kind, s["failed"], s["requests"], s["steady_p99"],
                                         s["during_p99"], s["p99_ratio"], s["seconds"],
                                         s["log_errors"]))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
