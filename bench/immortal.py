#!/usr/bin/env python
"""gc_freeze = True against "immortal", side by side, on the CPython running this script.

Three measures, each alternating the two values (A B, then B A, ...; --rounds, 3):

  full read  bench/apps/lazy_cache.py, 4 workers, fork_worker on: every worker builds its
             ~100 MB cache, SIGURG refork (the new workers inherit the template's cache),
             then every worker reads the whole cache once (GET /cache?all). Total PSS of
             the tree against "one warmed process": plain `gunicorn -w 1` whose worker
             built and read it. Target: <= 1.10x (issue 27; 1.3x before).
  churn      bench/memory_lifecycle.py's "d refork_on_memory" run (the long churn run) with
             each value, against its "e ideal". Target for "immortal": <= 1.3x.
  hello      bench/apps/hello.py, 4 workers, smart spawning: requests/s under wrk (or the
             Python client) for --seconds (5); then three TTINs, one at a time: the spawn
             latency is TTIN to the new worker's post_worker_init. Target: immortal >= 0.98x.

The pass's own figures (objects made immortal, objects walked, seconds) come from the
master's log line "... made N objects immortal in Ss (it went through W: ...)"; target:
<= 0.3 s per million objects walked, over all the passes of a run. Where this
CPython cannot make its heap immortal (3.11, a free-threaded build) the script says why
and exits 2.

    python bench/immortal.py [--quick] [--rounds R] [--measures read,hello,churn]
                             [--json PATH]
"""
import argparse
import re
import signal
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as `python bench/immortal.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loadgen, memory_lifecycle
from bench.refork_memory import drive, memory
from bench.server import (SMARTSPAWN, Server, Servers, product_source, run_in_tmpdir,
                          wait_for, write_json)
from gunicorn_smartspawn.forksafety import immortal

VALUES = {"True": "gc_freeze = True\n", "immortal": 'gc_freeze = "immortal"\n'}
PASS = re.compile(r"made (\d+) objects immortal in ([\d.]+)s \(it went through (\d+)")
WORKERS = 4
TARGET_READ, TARGET_CHURN, TARGET_RPS, TARGET_PASS = 1.1, 1.3, 0.98, 0.3


def passes(log):
    return [{"objects": int(n), "seconds": float(s), "walked": int(w)}
            for n, s, w in PASS.findall(log)]


def full_read(value, root, args):
    env = {"LAZY_CACHE_RECORDS": str(args.records)}
    with Servers() as servers:
        # debug: the template's pass is logged there (the preloader's at info).
        server = servers.start(Server("read " + value, root, "lazy_cache:app", SMARTSPAWN,
                                      VALUES[value] + "fork_worker = 10**9\n", WORKERS, env,
                                      log_level="debug"),
                               timeout=args.timeout)
        drive(server, 1, 400, args.timeout)
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation 2 .* done", args.timeout)
        server.wait_workers(args.timeout)
        drive(server, 1, 400, args.timeout, "/cache?all")
        result = memory(server)
        result["passes"] = passes(server.log())
    return result


def one_warmed_process(root, args):
    env = {"LAZY_CACHE_RECORDS": str(args.records)}
    with Servers() as servers:
        server = servers.start(Server("one warmed process", root, "lazy_cache:app", [], "",
                                      1, env), timeout=args.timeout)
        server.get_json("/cache?all", timeout=args.timeout)
        return memory(server)


def churn(value, root, args):
    name = "d refork_on_memory"
    memory_lifecycle.CONFIGS[name + " " + value] = (
        SMARTSPAWN, memory_lifecycle.CONFIGS[name][1] + VALUES[value])
    return memory_lifecycle.run_config(name + " " + value, root, args)


def hello(value, root, args):
    root.mkdir(parents=True)
    inits = root / "inits.txt"  # CLOCK_MONOTONIC of each worker's post_worker_init
    hook = ("import time\ndef post_worker_init(worker):\n    with open(%r, 'a') as f:\n"
            "        f.write('%%.6f\\n' %% time.monotonic())\n" % str(inits))
    with Servers() as servers:
        server = servers.start(Server("hello " + value, root / "server", "hello:app",
                                      SMARTSPAWN, VALUES[value] + hook, WORKERS),
                               timeout=args.timeout)
        load = loadgen.run(server.port, "/", 0, 8, args.seconds, root)
        latencies = []
        for count in range(WORKERS + 1, WORKERS + 4):  # three spawns, one at a time
            started = time.monotonic()
            server.signal(signal.SIGTTIN)
            wait_for(lambda: len(inits.read_text().split()) >= count,  # noqa: B023
                     args.timeout, "worker %d" % count)
            latencies.append((float(inits.read_text().split()[-1]) - started) * 1e3)
    return {"rps": load["rps"], "p99": load["p99"], "spawn_ms": latencies}


STEPS = {"read": (full_read, one_warmed_process), "churn": (churn, memory_lifecycle.run_ideal),
         "hello": (hello, None)}  # measure -> (one run per value, its reference or None)


def run(args, workdir):
    runs = {m: {"True": [], "immortal": [], "reference": []} for m in args.measures}
    for round_no in range(args.rounds):
        order = list(VALUES) if round_no % 2 == 0 else list(VALUES)[::-1]
        for measure in args.measures:
            step, reference = STEPS[measure]
            if reference is not None:
                runs[measure]["reference"].append(
                    reference(workdir / ("%s-reference-%d" % (measure, round_no)), args))
            for value in order:
                started = time.monotonic()
                result = step(value, workdir / ("%s-%s-%d" % (measure, value, round_no)), args)
                runs[measure][value].append(result)
                print("round %d %-6s %-9s %5.0f s" % (round_no + 1, measure, value,
                                                    time.monotonic() - started), flush=True)
    return {"benchmark": "immortal", "python": sys.version.split()[0], "args": vars(args),
            "revision": product_source()["git"], "runs": runs}


def total_pss(run):
    return run["final"]["total_pss"] if "final" in run else run["total_pss"]


def summarize(result):
    """Medians over rounds, and the median of each round's immortal / True ratio."""
    runs, med, rows, targets = result["runs"], statistics.median, [], {}

    def row(label, key, measure, fmt="%.1f"):
        pairs = list(zip(map(key, runs[measure]["True"]), map(key, runs[measure]["immortal"]),
                         strict=True))
        ratio = med(b / a for a, b in pairs)
        rows.append("| %s | %s | %s | %.3f |" % (label, fmt % med(a for a, _ in pairs),
                                                  fmt % med(b for _, b in pairs), ratio))
        return ratio

    def against_reference(label, measure, target):
        reference = med(map(total_pss, runs[measure]["reference"]))
        values = {v: med(map(total_pss, runs[measure][v])) for v in VALUES}
        rows.append("| %s (%.1f) | %.2f | %.2f | |" % (
            label, reference, values["True"] / reference, values["immortal"] / reference))
        targets["%s <= %.2f" % (label, target)] = values["immortal"] / reference

    if "read" in runs:
        row("full read: total PSS, MiB", total_pss, "read")
        against_reference("full read: x one warmed process", "read", TARGET_READ)
    if "churn" in runs:
        row("churn (refork_on_memory): final total PSS, MiB", total_pss, "churn")
        against_reference("churn: x its ideal", "churn", TARGET_CHURN)
    if "hello" in runs:
        targets["hello requests/s immortal / True >= %.2f" % TARGET_RPS] = row(
            "hello world: requests/s", lambda r: r["rps"], "hello", "%.0f")
        row("spawn latency (TTIN to post_worker_init), ms", lambda r: med(r["spawn_ms"]),
            "hello")
    print("\nCPython %s, %d round(s), %d workers; gunicorn_smartspawn %s\n"
          % (result["python"], result["args"]["rounds"], WORKERS, result["revision"]))
    print("| measure | gc_freeze = True | \"immortal\" | immortal / True (median of "
          "rounds) |\n|---|---:|---:|---:|")
    print("\n".join(rows))
    all_passes = [p for m in runs.values() for r in m["immortal"] for p in r.get("passes", ())]
    if all_passes:
        seconds = sum(p["seconds"] for p in all_passes) * 1e6
        per_million = seconds / sum(p["walked"] for p in all_passes)
        targets["pass: s per million objects walked <= %.1f" % TARGET_PASS] = per_million
        print("\nimmortal passes (made immortal / walked): %s; in all, %.3f s per million "
              "objects walked, %.3f per million made immortal" % (
                  sorted({"%d / %d" % (p["objects"], p["walked"]) for p in all_passes}),
                  per_million, seconds / sum(p["objects"] for p in all_passes)))
    print("\n| target | value | |\n|---|---:|---|")
    met = {}
    for label, value in targets.items():
        limit = float(label.rsplit(" ", 1)[1])
        met[label] = value >= limit if ">=" in label else value <= limit
        print("| %s | %.3f | %s |" % (label, value, "met" if met[label] else "MISSED"))
    result["targets"] = {k: {"value": v, "met": met[k]} for k, v in targets.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 12 000 churn requests")
    parser.add_argument("--rounds", type=int, help="rounds (3; --quick 1)")
    parser.add_argument("--records", type=int, default=105000, help="cache records (105000)")
    parser.add_argument("--requests", type=int, help="churn requests per run (30000)")
    parser.add_argument("--seconds", type=int, default=5, help="hello-world load, s (5)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of waits (60)")
    parser.add_argument("--idle-preloader", type=float, metavar="S",
                        help="churn: preloader_idle_timeout = S (memory_lifecycle's option)")
    parser.add_argument("--measures", default="read,hello,churn",
                        help="which of read, hello, churn (all)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    args.measures = args.measures.split(",")
    if not set(args.measures) <= set(STEPS):
        parser.error("--measures: %s is not one of read, hello, churn" % args.measures)
    why = immortal.unsupported()
    if why:
        print("gc_freeze = \"immortal\" cannot work here: %s" % why, file=sys.stderr)
        return 2
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.requests = args.requests or (12000 if args.quick else 30000)
    # What memory_lifecycle.run_config reads from its own arguments.
    args.workers, args.chunk = WORKERS, 1.0
    args.sample_interval, args.min_interval = 1.0, 4.0 if args.quick else 10.0
    result = run_in_tmpdir("ssbench-immortal-", run, args)
    if result is None:
        return 1
    summarize(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
