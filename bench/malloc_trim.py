#!/usr/bin/env python
"""Does glibc's malloc_trim(0) just before forking lower the server's total PSS?

Config hooks only, no product change. Both configurations run bench/apps/churn_app.py
with `-k smartspawn.Worker --workers 4` and `fork_worker = 10**9` (on; only our SIGURG
reforks), and the same two hooks, `on_preload(preloader)` (in the preloader, after the
app import) and `pre_template_fork(worker)` (in the worker becoming the template). Both
hooks run before the product's own gc.collect() + gc.freeze(), so each calls
gc.collect() itself first, to free the garbage the trim could give back:

  without   the hooks call gc.collect()
  with      the hooks call gc.collect(), then ctypes.CDLL("libc.so.6").malloc_trim(0)

One run: start; --load-seconds (6) of /item/{random k} from 4 client processes (the
workers fill their memo, ~80 % of the keys); measure ("warm"); SIGURG, wait for
"refork to generation 2 ... done", one request per new worker; measure ("refork").
A measure is the total PSS of the master and all its descendants (smaps_rollup).
Runs alternate without, with, without, with, ... (--rounds 3 each; --quick 1); the
report gives medians and the ratio with/without. No target: a measurement.

    python bench/malloc_trim.py [--quick] [--rounds R] [--json PATH]
"""
import argparse
import signal
import statistics
import sys
from pathlib import Path

if not __package__:  # run as `python bench/malloc_trim.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loadgen
from bench.refork_memory import drive, memory
from bench.server import (SMARTSPAWN, BenchError, Server, Servers, product_source,
                          run_in_tmpdir, write_json)

HOOKS = """import ctypes
import gc

fork_worker = 10**9


def before_fork():
    gc.collect()
    if %(trim)s:
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def on_preload(preloader):
    before_fork()


def pre_template_fork(worker):
    before_fork()
"""
CONFIGS = ("without", "with")
PHASES = ("warm", "refork")


def run_one(name, root, args):
    """One server: warm, measure, refork, measure -> {phase: memory(...)}."""
    config = HOOKS % {"trim": name == "with"}
    with Servers() as servers:
        server = servers.start(Server(name, root, "churn_app:app", SMARTSPAWN, config, 4),
                               timeout=args.timeout)
        loadgen.run_python(server.port, "/item/{id}", 1000, 4, args.load_seconds)
        result = {"warm": memory(server)}
        since, old = len(server.log()), server.worker_pids()
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation 2 .* done", args.timeout, since)
        server.wait_workers(args.timeout, exclude=old)
        drive(server, 1, 400, args.timeout, "/")
        result["refork"] = memory(server)
    if servers.killed:
        raise BenchError("processes outlived %s: %s" % (name, servers.killed))
    return result


def run(args, workdir):
    runs = {name: [] for name in CONFIGS}
    for round_no in range(args.rounds):
        for name in CONFIGS:
            result = run_one(name, workdir / ("%s-%d" % (name, round_no)), args)
            runs[name].append(result)
            print("round %d %-7s total PSS warm %6.1f  after refork %6.1f MiB" % (
                round_no + 1, name, result["warm"]["total_pss"],
                result["refork"]["total_pss"]), flush=True)
    return {"benchmark": "malloc_trim", "args": vars(args),
            "revision": product_source()["git"], "runs": runs}


def summarize(result):
    runs = result["runs"]
    median = {(name, phase): statistics.median(r[phase]["total_pss"] for r in runs[name])
              for name in CONFIGS for phase in PHASES}
    roles = {(name, phase, role): statistics.median(r[phase]["pss_by_role"].get(role, 0)
                                                    for r in runs[name])
             for name in CONFIGS for phase in PHASES for role in ("preloader", "template")}
    print("\n4 workers, churn_app, %d round(s) each, medians, MiB; gunicorn_smartspawn %s\n"
          % (len(runs["with"]), result["revision"]))
    print("| phase | without trim | with trim | with / without | preloader PSS without / "
          "with | template PSS without / with |\n|---|---:|---:|---:|---|---|")
    for phase in PHASES:
        print("| %s | %.1f | %.1f | %.3f | %.1f / %.1f | %.1f / %.1f |" % (
            phase, median["without", phase], median["with", phase],
            median["with", phase] / median["without", phase],
            roles["without", phase, "preloader"], roles["with", phase, "preloader"],
            roles["without", phase, "template"], roles["with", phase, "template"]))
    result["medians"] = {"%s %s" % key: value for key, value in median.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round")
    parser.add_argument("--rounds", type=int, help="rounds of without + with (3)")
    parser.add_argument("--load-seconds", type=float, default=6.0,
                        help="s of /item load before the first measure (6)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of waits (60)")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    result = run_in_tmpdir("ssbench-trim-", run, args)
    if result is None:
        return 2
    summarize(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
