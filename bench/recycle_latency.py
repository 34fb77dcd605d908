#!/usr/bin/env python
"""p99 latency while workers are recycled (max_requests) vs steady: plain gunicorn vs smartspawn.

App: bench/apps/heavy_import.py (a ~140 MB table and ~0.7 s of real CPU at import,
--import-seconds), endpoint GET / (cheap: "ok"), so that replacing a worker has a real
cost. Four servers run side by side, each `--workers 4` on 127.0.0.1:0 with its own
control socket:

  plain steady        gunicorn (sync workers, each imports the app), max_requests = 0
  plain recycling     the same with max_requests = 1000, max_requests_jitter = 200
  smartspawn steady   gunicorn -k smartspawn.Worker, max_requests = 0
  smartspawn recycling  the same with max_requests = 1000, max_requests_jitter = 200
                      (a worker at its limit keeps serving until its replacement, forked
                      from the preloader, serves: spawn before retire)

Two loads, both from loadgen's Python client processes, one request per connection,
every request's own latency:

  saturated  --workers clients back to back: the CPU is always busy, so any work a
             recycle adds (forks, exits, page copies) delays requests;
  paced      2 x --workers clients sending R requests/s in all on a fixed schedule
             (open loop; a late request counts from when it was due): the headroom a
             production server keeps. R is --pace (0.5) x the saturated rate of the
             steady servers (the lower one) in the first round, so that on any machine
             the paced p99 measures serving, not a queue; --rate R sets it instead.

After one unmeasured warm-up run per server, each round runs, for each load, the four
windows of --seconds (8) in turn, in alternating order (plain steady, smartspawn steady,
plain recycling, smartspawn recycling, then the reverse); before each window every server
must be idle (the processes of each used < 5 % of a CPU for 0.5 s, none starting or
ending meanwhile), so a plain worker exiting or importing after the previous window does
not slow the next one, whichever server that measures.

*During a recycle*: every server logs, with gunicorn's hooks, when a worker is forked
(post_fork), ready (post_worker_init) and reaped (child_exit). A recycle lasts from the
earliest to the latest of a new worker's fork and readiness and the nearest exit (within
2 s): for smartspawn, from the replacement's fork to the old worker's exit; for plain
gunicorn, from the old worker's exit to the end of its replacement's import. The
requests in flight at any time of a recycle are the ones *during* it.

*The floor*: a recycle forks a worker from a warmed process, which writes to the pages
it shares with it as it answers its first request, and stops an old worker, whose
address space is torn down. bench/fork_floor.py does that much outside the servers: a
process that imported the same app forks a child, which answers one request and exits,
and reaps it. In each round, after the four windows of a load, the smartspawn steady
server is loaded once more while the floor process does that as often as the
smartspawn recycling server recycled in its window of the round, each time for as long
as its median recycle lasted (as many requests in flight); those requests are the
floor's *during*, against the smartspawn steady p99: a reference for what a recycle
costs requests on this machine, with none of smartspawn's work (not a strict bound:
smartspawn forks the replacing standby ahead of need, before the recycle begins, and can
read below it).

Reported per kind and load (and the floor): steady p99, recycling p99 over the whole
window, p99 during recycles (and the share of requests that were), each as medians over
rounds, the median of the per-round ratios to the steady p99, max, requests/s, failed
requests (non-2xx and connection errors) and recycles per window. Targets (--check exits 1 when
one is missed): smartspawn's p99 during recycles <= 1.2 x its steady p99, under each
load, and 0 failed requests for smartspawn. Plain gunicorn's ratios are shown beside
them, not checked.

    python bench/recycle_latency.py [--quick] [--rounds R] [--seconds S] [--pace F | --rate R]
                                    [--immortal] [--json PATH] [--check]

--immortal adds a third server kind, smartspawn+immortal (gc_freeze = "immortal").
"""
import argparse
import statistics
import sys
import time
from pathlib import Path


if not __package__:  # run as `python bench/recycle_latency.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loadgen
from bench.fork_floor import Floor
from bench.server import (SMARTSPAWN, BenchError, Server, Servers, idle_for, product_source,
                          run_in_tmpdir, wait_for, write_json)

KINDS = {"plain": ([], ""), "smartspawn": (SMARTSPAWN, "")}  # name -> (gunicorn args, config)
# --immortal: a third server, side by side (CPython 3.12 to 3.14).
IMMORTAL = {"smartspawn+immortal": (SMARTSPAWN, 'gc_freeze = "immortal"\n')}
WINDOWS = ("steady", "recycling")
LOADS = ("saturated", "paced")
RECYCLING = "max_requests = %(max_requests)d\nmax_requests_jitter = %(jitter)d\n"
HOOKS = """
import os, time

def event(kind, pid):
    with open(%(events)r, "a") as log:
        log.write("%%.6f %%s %%d\\n" %% (time.monotonic(), kind, pid))

def post_fork(server, worker):
    event("fork", os.getpid())

def post_worker_init(worker):
    event("ready", os.getpid())

def child_exit(server, worker):
    event("exit", worker.pid)
"""
PAIRING = 2.0  # s: a worker's exit and its replacement's fork are this close at most
TARGET_RATIO = 1.2


def make_servers(args, workdir):
    """{(kind, window): Server}, in the order of a round."""
    env = {"HEAVY_IMPORT_SECONDS": str(args.import_seconds)}
    servers = {}
    for window in WINDOWS:
        for kind, (gunicorn_args, kind_config) in KINDS.items():
            root = workdir / ("%s-%s" % (kind, window))
            config = (kind_config + (RECYCLING % vars(args) if window == "recycling" else "")
                      + HOOKS % {"events": str(root / "events.log")})
            servers[kind, window] = Server("%s %s" % (kind, window), root, "heavy_import:app",
                                           gunicorn_args, config, args.workers, env)
    return servers


def recycles(server, start, end):
    """[(from, to)] of the recycles that overlap [start, end] (CLOCK_MONOTONIC s)."""
    path = server.root / "events.log"
    events = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    exits = [float(t) for t, kind, _ in events if kind == "exit"]
    ready = {pid: float(t) for t, kind, pid in events if kind == "ready"}
    spans = []
    for t, kind, pid in events:
        if kind != "fork":
            continue
        forked = float(t)
        times = [forked, ready.get(pid, forked)]
        nearest = min(exits, key=lambda e, f=forked: abs(e - f), default=None)
        if nearest is not None and abs(nearest - forked) <= PAIRING:
            times.append(nearest)
        spans.append((min(times), max(times)))
    return [(a, b) for a, b in spans if b >= start and a <= end]


def during(samples, spans):
    """The samples (start, end, ok) in flight at some time of one of the spans."""
    return [s for s in samples if any(s[0] <= b and s[1] >= a for a, b in spans)]


def wait_idle(servers, timeout):
    """Wait until the processes of each server use < 5 % of a CPU over 0.5 s: all of
    them, not only the one measured next (a plain worker that reached max_requests at
    the end of its window imports for 0.7 s, in the first second of the next window)."""
    wait_for(lambda: all(server.alive() for server in servers)
             and idle_for(servers, 0.5, 0.05), timeout, "every server to be idle", 0)


def window(server, load, args, rate):
    """One measured window -> loadgen figures, the same during recycles, the recycles."""
    paced = load == "paced"
    clients = args.workers * (2 if paced else 1)
    run = loadgen.PythonLoad(server.port, "/", 0, clients, max_seconds=args.seconds,
                             rate=rate if paced else 0.0).start()
    started = time.monotonic()
    time.sleep(args.seconds)
    samples = run.stop(early=not paced)  # paced clients finish their schedule
    server.alive()
    result = loadgen.summarize(samples, started, started + args.seconds)
    spans = recycles(server, started, started + args.seconds)
    inside = during([s for s in samples if started <= s[0] < started + args.seconds], spans)
    result["recycles"] = len(spans)
    result["during"] = loadgen.summarize(inside) if inside else None
    result["during_share"] = len(inside) / max(1, result["requests"] + result["errors"])
    result["recycle_seconds"] = statistics.median(b - a for a, b in spans) if spans else 0.0
    return result


def floor_window(server, floor, load, args, rate, times, seconds):
    """The smartspawn steady `server` under `load` while `floor` replaces a worker of its
    own `times` times, evenly over the window, each span lasting `seconds` at least (as
    long as a recycle's: as many requests in flight) -> figures as window()'s."""
    paced = load == "paced"
    run = loadgen.PythonLoad(server.port, "/", 0, args.workers * (2 if paced else 1),
                             max_seconds=args.seconds, rate=rate if paced else 0.0).start()
    started = time.monotonic()
    spans = []
    for n in range(times):
        time.sleep(max(0.0, started + (n + 0.5) * args.seconds / times - time.monotonic()))
        begun = time.monotonic()
        floor.go()
        time.sleep(max(0.0, begun + seconds - time.monotonic()))
        spans.append((begun, time.monotonic()))
    time.sleep(max(0.0, started + args.seconds - time.monotonic()))
    samples = run.stop(early=not paced)
    result = loadgen.summarize(samples, started, started + args.seconds)
    inside = during([s for s in samples if started <= s[0] < started + args.seconds], spans)
    result["recycles"] = len(spans)
    result["during"] = loadgen.summarize(inside) if inside else None
    result["during_share"] = len(inside) / max(1, result["requests"] + result["errors"])
    return result


def pace_of(runs, args):
    """The paced load's requests/s: --rate, or --pace x the lower saturated rate of the
    steady servers in the first round (below each server's capacity, the same for all)."""
    if args.rate:
        return {"rate": args.rate, "fraction": None, "saturated_rps": None}
    saturated = min(runs[("saturated", kind, "steady")][0]["rps"] for kind in KINDS)
    return {"rate": args.pace * saturated, "fraction": args.pace, "saturated_rps": saturated}


def pace_text(pace):
    """The paced load's rate as the report says it."""
    if pace["fraction"] is None:
        return "%.0f req/s in all (--rate)" % pace["rate"]
    return ("%.0f req/s in all: %.0f %% of %.0f, the lower saturated rate of the steady "
            "servers in round 1" % (pace["rate"], 100 * pace["fraction"], pace["saturated_rps"]))


def run(args, workdir):
    servers = make_servers(args, workdir)
    runs = {(load, *key): [] for load in LOADS for key in [*servers, ("floor", "recycling")]}
    with Servers() as started:
        started.start(*servers.values(), timeout=args.timeout)
        for server in servers.values():
            loadgen.run_python(server.port, "/", 0, args.workers, 2)  # warm-up
        floor = Floor("heavy_import:app", "/", 1, 1,
                      {"HEAVY_IMPORT_SECONDS": str(args.import_seconds)})
        try:
            pace = rounds(servers, runs, args, floor)
        finally:
            floor.stop()
    if started.killed:
        raise BenchError("processes outlived their server: %s" % started.killed)
    return {"benchmark": "recycle_latency", "args": vars(args), "pace": pace,
            "revision": product_source()["git"],
            "runs": {"%s %s %s" % key: value for key, value in runs.items()}}


def rounds(servers, runs, args, floor):
    """Every round's windows, into `runs`, the floor's last under each load -> the paced
    load's pace."""
    pace = None
    for round_no in range(args.rounds):
        for load in LOADS:  # saturated first: the pace comes from its first round
            if load == "paced" and pace is None:
                pace = pace_of(runs, args)
                print("paced load: %s" % pace_text(pace), flush=True)
            rate = pace and pace["rate"]
            order = list(servers) if round_no % 2 == 0 else list(servers)[::-1]
            for key in order:
                wait_idle(list(servers.values()), args.timeout)
                result = window(servers[key], load, args, rate)
                runs[(load, *key)].append(result)
                report_window(round_no, load, servers[key].name, result)
            recycling = runs[(load, "smartspawn", "recycling")][-1]
            wait_idle(list(servers.values()), args.timeout)
            result = floor_window(servers["smartspawn", "steady"], floor, load, args, rate,
                                  max(recycling["recycles"], 1), recycling["recycle_seconds"])
            runs[(load, "floor", "recycling")].append(result)
            report_window(round_no, load, "floor", result)
    return pace


def report_window(round_no, load, name, result):
    inside = result["during"]
    print("round %d %-9s %-22s %6.0f req/s  p99 %7.2f  during recycles %s  max %7.1f ms  "
          "failed %d  recycles %d" % (
              round_no + 1, load, name, result["rps"], result["p99"],
              "%7.2f" % inside["p99"] if inside else "    -", result["max"],
              result["errors"], result["recycles"]), flush=True)


def medians(steady, recycling):
    """One kind under one load: medians over rounds and the per-round ratios."""
    pairs = list(zip(steady, recycling, strict=True))
    timed = [(s, r) for s, r in pairs if r["during"]]
    return {
        **{"%s_%s" % (w, k): statistics.median(r[k] for r in rs)
           for w, rs in (("steady", steady), ("recycling", recycling))
           for k in ("p99", "p999", "max", "rps")},
        "p99_ratio": statistics.median(r["p99"] / s["p99"] for s, r in pairs),
        "during_p99": statistics.median(r["during"]["p99"] for _, r in timed) if timed else None,
        "during_ratio": statistics.median(r["during"]["p99"] / s["p99"] for s, r in timed)
        if timed else None,
        "during_share": statistics.median(r["during_share"] for r in recycling),
        "recycles": statistics.median(r["recycles"] for r in recycling),
        "failed": sum(r["errors"] for r in steady + recycling)}


def summarize(result):
    """Per load and kind: medians, ratios, failures; prints the tables. -> missed targets."""
    runs, args = result["runs"], result["args"]
    summary = {"%s %s" % (load, kind): medians(
        runs["%s %s steady" % (load, "smartspawn" if kind == "floor" else kind)],
        runs["%s %s recycling" % (load, kind)]) for load in LOADS for kind in [*KINDS, "floor"]}
    print("\n%d workers, GET / of heavy_import (%.1f s import), max_requests %d + jitter %d; "
          "saturated: %d clients back to back; paced: %d clients, %s; %d round(s) "
          "of %d s windows; medians; gunicorn_smartspawn %s\n" % (
              args["workers"], args["import_seconds"], args["max_requests"], args["jitter"],
              args["workers"], 2 * args["workers"], pace_text(result["pace"]),
              args["rounds"], args["seconds"], result["revision"]))
    print("| load | server | steady p99 ms | recycling p99 ms | × steady | p99 during recycles "
          "ms | × steady | requests during recycles | max recycling ms | req/s steady / "
          "recycling | recycles per window | failed |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in summary.items():
        print("| %s | %.2f | %.2f | %.2f | %s | %s | %.0f %% | %.0f | %.0f / %.0f | %.0f | %d |"
              % (" | ".join(name.split()), m["steady_p99"], m["recycling_p99"], m["p99_ratio"],
                 fmt(m["during_p99"]), fmt(m["during_ratio"]), 100 * m["during_share"],
                 m["recycling_max"], m["steady_rps"], m["recycling_rps"], m["recycles"],
                 m["failed"]))
    targets = {}
    for load in LOADS:
        ratio = summary["%s smartspawn" % load]["during_ratio"]
        targets["smartspawn p99 during recycles <= %.1f x steady, %s" % (TARGET_RATIO, load)] = (
            ratio if ratio is not None else float("nan"),
            ratio is not None and ratio <= TARGET_RATIO)
    failed = sum(summary["%s smartspawn" % load]["failed"] for load in LOADS)
    targets["smartspawn failed requests = 0"] = (failed, failed == 0)
    print("\n| target | value | |\n|---|---:|---|")
    for label, (value, met) in targets.items():
        print("| %s | %.2f | %s |" % (label, value, "met" if met else "MISSED"))
    print("(plain gunicorn, p99 during recycles / steady: %s; the floor: %s)" % tuple(
        ", ".join("%s %s" % (load, fmt(summary["%s %s" % (load, kind)]["during_ratio"]))
                  for load in LOADS) for kind in ("plain", "floor")))
    result.update(summary=summary, targets={
        label: {"value": value, "met": met} for label, (value, met) in targets.items()})
    return [label for label, (_, met) in targets.items() if not met]


def fmt(value):
    return "-" if value is None else "%.2f" % value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 4 s windows")
    parser.add_argument("--rounds", type=int, help="rounds of the four windows (3)")
    parser.add_argument("--seconds", type=int, help="seconds per window (8)")
    parser.add_argument("--workers", type=int, default=4, help="workers = clients (4)")
    parser.add_argument("--pace", type=float, default=0.5,
                        help="the paced load's rate as a share of the saturated rate "
                        "measured in round 1 (0.5)")
    parser.add_argument("--rate", type=float,
                        help="requests/s of the paced load, in all, instead of --pace")
    parser.add_argument("--max-requests", type=int, default=1000, help="recycling (1000)")
    parser.add_argument("--jitter", type=int, default=200, help="max_requests_jitter (200)")
    parser.add_argument("--import-seconds", type=float, default=0.7,
                        help="CPU time of the app's import, s (0.7)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of waits (60)")
    parser.add_argument("--immortal", action="store_true",
                        help='also smartspawn with gc_freeze = "immortal"')
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if not 0 < args.pace <= 1:
        parser.error("--pace is a share of the saturated rate, in (0, 1]: not %s" % args.pace)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (4 if args.quick else 8)
    if args.immortal:
        KINDS.update(IMMORTAL)
    result = run_in_tmpdir("ssbench-recycle-", run, args)
    if result is None:
        return 2
    missed = summarize(result)
    write_json(args.json, result)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
