#!/usr/bin/env python
"""Latency and throughput: plain gunicorn (sync) vs `gunicorn -k smartspawn.Worker`.

Two apps, each served by two servers side by side, `--workers 2` each:

  plain       gunicorn APP                      (sync workers, each imports the app)
  smartspawn  gunicorn -k smartspawn.Worker APP (defaults: smart spawning, no oob_gc)

Endpoints: apps/hello.py `/` (the server's own per-request cost), apps/flask_app.py `/`
(Flask routing + jsonify) and `/product/{id}` (a Jinja2 page, rendered on first use and
then served from the per-process lazily filled cache; random ids). The load (loadgen.py:
wrk if installed, else Python clients) has as many connections as the server has
workers. Per endpoint: one unmeasured warm-up run per server, then runs alternating
plain, smartspawn, plain, smartspawn, ... Reported: per-server medians of requests/s,
p50, p99, p99.9 and the median of the per-round ratios smartspawn/plain.

Then, for `hello /` and `flask /`, the CPU each server spends per request
(bench/cpucost.py: both servers loaded at the same time, servers and load generators
pinned to different CPUs, 8 rounds of 2 s): the hello-world throughput target is judged
on it, the requests per CPU-second of smartspawn against plain's, whose per-round spread
is a few tenths of a percent where single rounds of throughput differ by ±10-20 %.

    python -m bench.load [--quick] [--rounds N] [--seconds S] [--json PATH]
"""
import argparse
import statistics
import sys

from bench import cpucost, loadgen
from bench.server import (SMARTSPAWN, BenchError, Server, Servers, run_in_tmpdir,
                          write_json)

WORKERS = 2
FLASK_PRODUCTS = 60000
APPS = {  # name -> (app, [(endpoint label, path)])
    "hello": ("hello:app", [("hello /", "/")]),
    "flask": ("flask_app:app", [("flask /", "/"), ("flask /product/{id}", "/product/{id}")]),
}
CPU_COST = ("hello /", "flask /")  # endpoints whose CPU per request is compared too
CONFIGS = {"plain": [], "smartspawn": SMARTSPAWN}  # name -> extra gunicorn args
KEYS = ("rps", "p50", "p99", "p999")
TARGET_HELLO_RPS = 0.98  # hello-world throughput >= 0.98 x plain gunicorn


def measure_endpoint(servers, path, args, workdir):
    """Warm-up, then alternating rounds -> {config: [run figures]}."""
    def one(server, seconds):
        result = loadgen.run(server.port, path, FLASK_PRODUCTS, WORKERS, seconds, workdir)
        server.alive()
        return result

    for server in servers.values():
        one(server, args.warmup)
    runs = {name: [] for name in servers}
    for round_no in range(args.rounds):
        for name, server in servers.items():
            result = one(server, args.seconds)
            runs[name].append(result)
            print("%-22s round %d %-11s %7.0f req/s  p50 %6.2f  p99 %7.2f  p99.9 %7.2f ms"
                  "  errors %d" % (path, round_no + 1, name, result["rps"], result["p50"],
                                   result["p99"], result["p999"], result["errors"]),
                  flush=True)
    return runs


def summarize(runs):
    """Medians per config, and the median of the per-round ratios to plain."""
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in KEYS} |
               {"errors": sum(r["errors"] for r in rs)} for name, rs in runs.items()}
    ratios = {name: {k: statistics.median(b[k] / a[k] for a, b in
                                          zip(runs["plain"], rs, strict=True)) for k in KEYS}
              for name, rs in runs.items() if name != "plain"}
    return {"runs": runs, "medians": medians, "ratios_to_plain": ratios}


def run(args, workdir):
    endpoints = {}
    for app_name, (app, paths) in APPS.items():
        servers = {name: Server(name, workdir / app_name / name, app, extra, workers=WORKERS,
                                env={"FLASK_APP_PRODUCTS": str(FLASK_PRODUCTS)})
                   for name, extra in CONFIGS.items()}
        with Servers() as started:
            started.start(*servers.values())
            for label, path in paths:
                endpoints[label] = summarize(measure_endpoint(servers, path, args, workdir))
                if label in CPU_COST:
                    endpoints[label]["cpu"] = cpucost.measure(
                        list(servers.values()), path, WORKERS, workdir / "cpu" / app_name,
                        args.cpu_rounds, args.seconds, FLASK_PRODUCTS,
                        echo=lambda line: print(line, flush=True))
        if started.killed:
            raise BenchError("processes outlived their server: %s" % started.killed)
    hello = endpoints["hello /"]["cpu"]["ratios"]["smartspawn"]
    return {"benchmark": "load", "client": "wrk" if loadgen.have_wrk() else "python",
            "workers": WORKERS, "connections": WORKERS, "rounds": args.rounds,
            "seconds": args.seconds, "endpoints": endpoints,
            "targets": {"hello throughput smartspawn/plain": {
                **hello, "value": hello["median"], "target": ">= %.2f" % TARGET_HELLO_RPS,
                "met": hello["median"] >= TARGET_HELLO_RPS,
                "method": "requests per CPU-second (bench/cpucost.py)"}}}


def print_report(result):
    print("\nclient %s, %d workers, %d connections, %d rounds of %d s (medians)"
          % (result["client"], result["workers"], result["connections"], result["rounds"],
             result["seconds"]))
    for label, figures in result["endpoints"].items():
        print("\n%s\n  %-11s %9s %8s %8s %9s %7s" % (label, "server", "req/s", "p50 ms",
                                                     "p99 ms", "p99.9 ms", "errors"))
        for name, m in figures["medians"].items():
            print("  %-11s %9.0f %8.2f %8.2f %9.2f %7d" % (name, *(m[k] for k in KEYS),
                                                             m["errors"]))
        for name, r in figures["ratios_to_plain"].items():
            print("  %-11s %9.3f %8.3f %8.3f %9.3f   (x plain)" % (name, *(r[k] for k in KEYS)))
        if "cpu" in figures:
            print_cpu(figures["cpu"])
    for name, target in result["targets"].items():
        print("\n%s: %.3f (target %s: %s)" % (name, target["value"], target["target"],
                                              "met" if target["met"] else "MISSED"))


def print_cpu(cpu):
    print("  CPU per request, together%s, %d rounds of %d s: %s" % (
        " and pinned" if cpu["pinned"] else "", cpu["rounds"], cpu["seconds"], "  ".join(
            "%s %.1f us" % (name, statistics.median(r["cpu_us"] for r in runs))
            for name, runs in cpu["runs"].items())))
    for name, summary in cpu["ratios"].items():
        print("  %-11s requests per CPU-second x plain: %s" % (name, cpucost.text(summary)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s")
    # Many short rounds: the median of per-round ratios then shrugs off bursts of other
    # load on the machine better than a few long ones.
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (7)")
    parser.add_argument("--seconds", type=int, default=2, help="seconds per run (2)")
    parser.add_argument("--cpu-rounds", type=int, default=cpucost.ROUNDS,
                        help="rounds of the CPU per request (%d)" % cpucost.ROUNDS)
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.cpu_rounds = 2, 1, 3
    args.warmup = 1 if args.quick else 2
    result = run_in_tmpdir("ssbench-load-", run, args)
    if result is None:
        return 2
    print_report(result)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
