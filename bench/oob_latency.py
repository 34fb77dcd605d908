#!/usr/bin/env python
"""Request latency with and without out-of-band GC: plain gunicorn vs smartspawn + oob_gc.

Two real servers run bench/apps/oob_app.py (a ~760 000-object heap built at import, and
an endpoint that leaves ~3 000 objects of cyclic garbage per request), side by side:

  A  plain ``gunicorn`` with its sync worker (each worker imports the app itself);
  B  ``gunicorn -k smartspawn.Worker`` with ``oob_gc = True`` (default settings otherwise,
     so the preloader's gc.freeze() is part of it).
  C  (--also-no-oob) ``gunicorn -k smartspawn.Worker`` without oob_gc: what freezing
     alone gives, to tell it apart from moving the collections out of requests.
  F  the floor, on /garbage only: plain ``gunicorn`` whose worker frees each request's
     rows once the connection is closed, where B collects them, by reference counting
     (OOB_BENCH_ACYCLIC=1: the app makes no cycle), with the collector off. The same
     requests and the same freeing at the same moment, without the collector's own work
     (~0.4 ms of CPU per request here, whichever process does it, competing with the
     requests for the two cores): the least p99 any out-of-band collection could give.
  G  the collector's floor, on /garbage only: plain ``gunicorn`` whose worker runs
     ``gc.collect(0)`` once the connection is closed, where B collects, the automatic
     collector off: the least collecting that frees the same garbage (B also collects the
     older generations now and then), with none of smartspawn's machinery. F's p99
     without the collector's work, G's with it.

Each server has --workers W (default 4: the configuration DESIGN.md's baseline was
measured with, and close to gunicorn's advice of 2 x cores + 1 on this 2-core machine;
with 2 workers the clients' own CPU weighs more, see docs/out-of-band.md) and binds
127.0.0.1:0 with its own --control-socket. The load (concurrency = W) is, by default, W
client processes, each sending one request per connection, back to back, until the run's
deadline; every request's latency is recorded as measured. With --client wrk it is wrk
(one thread, W connections): its throughput is comparable, but wrk 4.1 "corrects" its
latency histogram for coordinated omission (stats_correct: a response that took k times
the mean interval adds k synthetic samples), so its percentiles describe a constant-rate
client and are much higher than per-request ones whenever a server stalls. Runs
alternate A B [C] A B [C] ..., per endpoint (/garbage, then /hello), after one
unmeasured warm-up run per server and endpoint. For each run: p50 / p99 / p99.9 latency
and requests per second; the report gives per-server medians and the median of the
per-round ratios B/A, against the targets:

  /garbage: p99 of B <= 0.7 x A and p99.9 <= 0.2 x A, at a throughput >= 0.97 x A's;
  /hello:   throughput of B >= 0.98 x A's (the plugin adds no per-request cost), judged
            on the requests per CPU-second of B against A's (bench/cpucost.py: A and B
            loaded at the same time, pinned apart from their load generators, 8 rounds
            of 2 s), whose per-round spread is a few tenths of a percent where rounds of
            throughput taken in turns differ by several percent.

    python bench/oob_latency.py [--quick] [--rounds N] [--seconds S] [--workers W]
                                [--client wrk|python] [--also-no-oob] [--json PATH] [--check]

Every wait has a deadline; servers are stopped by pid (bench/server.py: SIGINT, then
SIGKILL of anything left in their session) on success, error, ^C and SIGTERM alike.
"""
import argparse
import multiprocessing
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


if not __package__:  # run as `python bench/oob_latency.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cpucost, loadgen
from bench.server import SMARTSPAWN, BenchError, Server, Servers, write_json

TARGET_P99_RATIO = 0.7          # /garbage: p99 of B at most this times A's
TARGET_P999_RATIO = 0.2         # /garbage: p99.9 of B at most this times A's
TARGET_GARBAGE_RPS_RATIO = 0.97  # /garbage: throughput of B at least this times A's
TARGET_HELLO_RPS_RATIO = 0.98    # /hello: throughput of B at least this times A's

FIGURES = ("rps", "p50", "p99", "p999", "cpu_us")

# wrk prints its histogram in microseconds; this script adds the percentiles we need.
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def make_server(label, root, smartspawn, oob_gc, workers, env):
    return Server(label, root, "oob_app:app", SMARTSPAWN if smartspawn else [],
                  "oob_gc = True\n" if oob_gc else "", workers, env, timeout=120)


FLOOR = "F floor: no collector"
NO_COLLECTOR = """
import gc
import sys

from gunicorn.workers.sync import SyncWorker


class FloorWorker(SyncWorker):
    # B's worker collects once the connection is closed: free the same objects there.
    def handle(self, listener, client, addr):
        super().handle(listener, client, addr)
        sys.modules["oob_app"].AFTER_RESPONSE.clear()


worker_class = FloorWorker


def post_worker_init(worker):
    gc.disable()
"""


def make_floor(root, workers, env):
    return Server(FLOOR, root, "oob_app:app", [], NO_COLLECTOR, workers,
                  {**env, "OOB_BENCH_ACYCLIC": "1"}, timeout=120)


GC_FLOOR = "G floor: gc.collect(0)"
YOUNG_ONLY = """
import gc

from gunicorn.workers.sync import SyncWorker


class YoungCollectionWorker(SyncWorker):
    # Where B's worker collects, once the connection is closed: the least collection
    # that frees a request's cycles (they never leave the youngest generation).
    def handle(self, listener, client, addr):
        super().handle(listener, client, addr)
        gc.collect(0)


worker_class = YoungCollectionWorker


def post_worker_init(worker):
    gc.disable()
"""


def make_gc_floor(root, workers, env):
    return Server(GC_FLOOR, root, "oob_app:app", [], YOUNG_ONLY, workers, env, timeout=120)


def loaded(servers, path):
    """The servers measured on `path`: the floors are about /garbage's collections only."""
    return [s for s in servers if path == "/garbage" or s.name not in (FLOOR, GC_FLOOR)]


# -- load generators ---------------------------------------------------------------------

def run_wrk(port, path, connections, seconds, script):
    cmd = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds, "--timeout", "10s",
           "-s", str(script), "http://127.0.0.1:%d%s" % (port, path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    match = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out.stdout, re.M)
    if out.returncode or not match:
        raise BenchError("wrk failed (%s):\n%s%s" % (out.returncode, out.stdout, out.stderr))
    requests, duration_us, p50, p99, p999, worst, errors = map(int, match.groups())
    return {"requests": requests, "rps": requests / (duration_us / 1e6), "p50": p50 / 1e3,
            "p99": p99 / 1e3, "p999": p999 / 1e3, "max": worst / 1e3, "errors": errors}


def client_loop(port, path, deadline, pipe, close=False):
    """One connection's worth of load, in its own process: request after request
    (`close`: with Connection: close, which event-loop servers need to close it)."""
    latencies, errors = [], 0
    request = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n"
               % (path, "Connection: close\r\n" if close else "")).encode()
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            data = loadgen.exchange(port, request)
        except OSError:
            errors += 1
            continue
        if data.startswith(b"HTTP/1.1 200"):
            latencies.append((time.perf_counter() - started) * 1e3)
        else:
            errors += 1
    pipe.send((latencies, errors))
    pipe.close()


def run_python_client(port, path, connections, seconds, close=False):
    """`connections` processes (no shared GIL), each one request per connection at a time;
    every request's latency is recorded as it was, connect to end of response."""
    context = multiprocessing.get_context("fork")
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    clients = []
    for _ in range(connections):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=client_loop,
                                  args=(port, path, deadline, sender, close))
        process.start()
        sender.close()
        clients.append((process, receiver))
    latencies, errors = [], 0
    try:
        for _, receiver in clients:
            if not receiver.poll(seconds + 30):
                raise BenchError("a client process did not report")
            mine, failed = receiver.recv()
            latencies += mine
            errors += failed
    finally:
        for process, receiver in clients:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
            receiver.close()
    elapsed = time.monotonic() - started
    if not latencies:
        raise BenchError("no successful request (%d errors)" % errors)
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))]
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50": pct(50),
            "p99": pct(99), "p999": pct(99.9), "max": latencies[-1], "errors": errors}


# -- the benchmark ------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured A/B rounds (3)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per run (10)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 s")
    parser.add_argument("--workers", type=int, default=4, help="workers per server (4)")
    parser.add_argument("--client", choices=("python", "wrk"), default="python",
                        help="python (default): every request's own latency; wrk: its "
                        "percentiles are corrected for coordinated omission (see above)")
    parser.add_argument("--also-no-oob", action="store_true",
                        help="add server C: smartspawn without oob_gc")
    parser.add_argument("--records", type=int, default=250000, help="heap records (250000)")
    parser.add_argument("--cycles", type=int, default=1000,
                        help="rows (3 tracked objects each, in one cycle) per /garbage "
                        "request (1000)")
    parser.add_argument("--paths", default="/garbage,/hello",
                        help="endpoints to load, in order (/garbage,/hello)")
    parser.add_argument("--cpu-rounds", type=int, default=cpucost.ROUNDS,
                        help="rounds of /hello's CPU per request, A and B together (%d)"
                        % cpucost.ROUNDS)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.cpu_rounds = 2, 4, 3

    tmp = Path(tempfile.mkdtemp(prefix="oob-bench-"))
    env = {"OOB_BENCH_RECORDS": str(args.records), "OOB_BENCH_CYCLES": str(args.cycles)}
    script = tmp / "percentiles.lua"
    script.write_text(WRK_SCRIPT)
    servers = [make_server("A plain gunicorn", tmp / "a", False, False, args.workers, env),
               make_server("B smartspawn oob_gc", tmp / "b", True, True, args.workers, env)]
    if args.also_no_oob:
        servers.append(make_server("C smartspawn, no oob", tmp / "c", True, False,
                                   args.workers, env))
    if "/garbage" in args.paths.split(","):
        servers.append(make_floor(tmp / "f", args.workers, env))
        servers.append(make_gc_floor(tmp / "g", args.workers, env))

    def terminate(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminate)
    failed = True
    try:
        with Servers() as started:
            started.start(*servers)
            results = measure(servers, args, script)
        failed = False
    finally:
        if failed:
            print("logs kept in %s" % tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    missed = report(servers, results, args)
    write_json(args.json, results)
    return 1 if args.check and missed else 0


def measure(servers, args, script):
    def one_run(server, path, seconds):
        cpu = server.cpu_seconds()
        if args.client == "wrk":
            result = run_wrk(server.port, path, args.workers, seconds, script)
        else:
            result = run_python_client(server.port, path, args.workers, seconds)
        server.alive()
        # The server's own CPU per request: what the server costs, whatever else runs on
        # the machine (throughput and latency also depend on that).
        result["cpu_us"] = (server.cpu_seconds() - cpu) / result["requests"] * 1e6
        return result

    results = {"client": args.client, "workers": args.workers, "seconds": args.seconds,
               "rounds": args.rounds, "runs": {}}
    for path in args.paths.split(","):
        for server in loaded(servers, path):
            one_run(server, path, max(2, args.seconds // 2))  # warm-up, not counted
        for round_no in range(args.rounds):
            for server in loaded(servers, path):
                result = one_run(server, path, args.seconds)
                results["runs"].setdefault(path, {}).setdefault(server.name, []).append(result)
                print("%-9s round %d  %-22s %7.0f req/s  p50 %7.2f  p99 %7.2f  p99.9 %7.2f"
                      "  max %7.1f ms  cpu %6.0f us/req  errors %d" % (
                          path, round_no + 1, server.name, result["rps"], result["p50"],
                          result["p99"], result["p999"], result["max"], result["cpu_us"],
                          result["errors"]), flush=True)
        if path == "/hello":
            results.setdefault("cpu", {})[path] = cpucost.measure(
                servers[:2], path, args.workers, script.parent / "cpu", args.cpu_rounds,
                echo=lambda line: print(line, flush=True))
    return results


def report(servers, results, args):
    a = servers[0].name
    missed = []
    print("\nclient %s, %d workers per server, concurrency %d, %d rounds of %d s, "
          "alternating" % (args.client, args.workers, args.workers, args.rounds, args.seconds))
    for path, by_server in results["runs"].items():
        print("\n%s  (medians over rounds; ratio = median of per-round ratios to A)" % path)
        print("  %-22s %9s %9s %9s %9s %11s %7s" % ("server", "req/s", "p50 ms", "p99 ms",
                                                     "p99.9 ms", "cpu us/req", "errors"))
        for name, runs in by_server.items():
            print("  %-22s %9.0f %9.2f %9.2f %9.2f %11.0f %7d" % (
                name, *(statistics.median(r[k] for r in runs) for k in FIGURES),
                sum(r["errors"] for r in runs)))
        for name in list(by_server)[1:]:
            pairs = list(zip(by_server[a], by_server[name], strict=True))
            ratios = {k: statistics.median(b[k] / a_[k] for a_, b in pairs) for k in FIGURES}
            results.setdefault("ratios", {}).setdefault(path, {})[name] = ratios
            print("  %-22s %9.3f %9.3f %9.3f %9.3f %11.3f   (x A)" % (
                name, *(ratios[k] for k in FIGURES)))
    b = servers[1].name
    ratios = results["ratios"]
    checks = []
    if "/garbage" in ratios:
        garbage = ratios["/garbage"][b]
        checks.append(("/garbage p99 B/A <= %.2f" % TARGET_P99_RATIO, garbage["p99"],
                       garbage["p99"] <= TARGET_P99_RATIO))
        checks.append(("/garbage p99.9 B/A <= %.2f" % TARGET_P999_RATIO, garbage["p999"],
                       garbage["p999"] <= TARGET_P999_RATIO))
        floor = ratios["/garbage"].get(FLOOR)
        if floor:
            results["floor"] = {"p99": floor["p99"], "p999": floor["p999"]}
            print("\n/garbage p99 F/A (the floor: no collector) %.3f" % floor["p99"])
        gc_floor = ratios["/garbage"].get(GC_FLOOR)
        if gc_floor:
            results["gc_floor"] = {"p99": gc_floor["p99"], "p999": gc_floor["p999"]}
            print("/garbage p99 G/A (the collector's floor: gc.collect(0) after each "
                  "response) %.3f" % gc_floor["p99"])
        checks.append(("/garbage throughput B/A >= %.2f" % TARGET_GARBAGE_RPS_RATIO,
                       garbage["rps"], garbage["rps"] >= TARGET_GARBAGE_RPS_RATIO))
    if "/hello" in results.get("cpu", {}):
        hello = results["cpu"]["/hello"]["ratios"][b]
        print("\n/hello, A and B together: requests per CPU-second B/A %s"
              % cpucost.text(hello))
        checks.append(("/hello throughput B/A >= %.2f (requests per CPU-second)"
                       % TARGET_HELLO_RPS_RATIO, hello["median"],
                       hello["median"] >= TARGET_HELLO_RPS_RATIO))
    errors = sum(r["errors"] for runs in results["runs"].values() for rs in runs.values()
                 for r in rs)
    print("\ntargets")
    for name, value, ok in checks:
        print("  %-34s %.3f  %s" % (name, value, "met" if ok else "MISSED"))
        if not ok:
            missed.append(name)
    if errors:
        print("  failed requests: %d" % errors)
        missed.append("errors")
    results["targets"] = {name: {"value": value, "met": ok} for name, value, ok in checks}
    return missed


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print("benchmark failed: %s" % exc, file=sys.stderr)
        sys.exit(2)
