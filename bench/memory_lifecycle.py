#!/usr/bin/env python
"""Total memory (PSS) of a 4-worker server over a long run: no refork, fork_worker, memory.

App: bench/apps/churn_app.py (a ~55 MB catalogue built at import; each /item/{k} fills a
memo of a bounded key space, 1000 keys, ~55 MB when full, and reads catalogue records and
memo rows, which writes their refcounts and un-shares the pages they live on). Each
configuration serves the same load: `--requests` (60 000; --quick 12 000) requests to
/item/{random k}, `--workers` (4) Python client processes against `--workers` workers:

  a  smart          -k smartspawn.Worker, no refork
  b  fork_worker    fork_worker = 1000 (one refork, when worker-0 has served 1000)
  c  schedule       fork_worker = [100, 400, 1600, 6400]: tuned by hand to the key space.
                    Each template has seen the keys of its lineage; a worker sees a
                    fraction 1 - exp(-n/1000) of the 1000 keys after n requests, so the
                    templates hold ~10 %, ~40 %, ~88 % and ~100 % of the memo (the last
                    at 8 500 requests of its lineage, ~34 000 in all); then no refork.
  d  memory         refork_on_memory = True (default growth 0.1), with the master's
                    memory_sample_interval and refork_min_interval shortened from 5 s and
                    30 s to --sample-interval (1 s) and --min-interval (10 s; --quick 4 s):
                    the run lasts about a minute, not hours.
  e  ideal          plain `gunicorn -w 1` whose one worker built the whole memo (GET /warm):
                    master + one warmed process, the floor any number of workers sharing
                    everything would approach.

The load runs in chunks of `--chunk` s (1); after each, the total PSS of the master and
every live descendant (preloader, template, standbys, workers: /proc/PID/smaps_rollup)
is recorded against the requests served so far, with the reforks the log announced
("Refork to generation N (reason)"). After the last chunk the run waits until any refork
in progress is done, then takes the final measure. Configurations run one after the
other; rounds alternate the order (a b c d e, e d c b a, ...; --rounds 2, --quick 1);
the report gives medians over rounds. Targets (--check exits 1 if one is missed):

  final total PSS of d <= the lower of b's and c's;   d <= 1.3 x e;   0 failed requests.

The report also gives each configuration's total PSS averaged over the requests of the run
(less sensitive than the final figure to where the run ends in d's refork cycle), and says
so if d never reforked on memory. Plot: OUT/memory_lifecycle.png. `--idle-preloader S`
adds `preloader_idle_timeout = S` to a-d: after a refork the preloader (and its standby)
then exit once idle, and their copy of the import-time heap with them.

    python bench/memory_lifecycle.py [--quick] [--rounds R] [--requests N] [--out DIR]
                                     [--json PATH] [--check]
"""
import argparse
import re
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as `python bench/memory_lifecycle.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loadgen, plots
from bench.refork_memory import memory
from bench.server import (SMARTSPAWN, BenchError, Server, Servers, product_source,
                          run_in_tmpdir, wait_for, write_json)

APP, KEYS, PATH = "churn_app:app", 1000, "/item/{id}"
CONFIGS = {  # name -> (gunicorn args, gunicorn.conf.py; %(...)s from the arguments)
    "a smart": (SMARTSPAWN, ""),
    "b fork_worker=1000": (SMARTSPAWN, "fork_worker = 1000\n"),
    "c fork_worker=[100,400,1600,6400]": (SMARTSPAWN, "fork_worker = [100, 400, 1600, 6400]\n"),
    "d refork_on_memory": (SMARTSPAWN, "refork_on_memory = True\n"
                           "memory_sample_interval = %(sample_interval)s\n"
                           "refork_min_interval = %(min_interval)s\n"),
}
IDEAL = "e ideal"
REFORK = re.compile(r"Refork to generation (\d+) \((.*?)\)(?:: worker.*)?$", re.M)
REFORK_END = re.compile(r"refork to generation \d+ \(.*\) (done|abandoned)")
TARGET_IDEAL_RATIO = 1.3


def make_server(name, root, args):
    gunicorn_args, config = CONFIGS[name]
    if args.idle_preloader:
        config += "preloader_idle_timeout = %(idle_preloader)s\n"
    return Server(name, root, APP, gunicorn_args, config % vars(args), args.workers,
                  {"CHURN_KEYS": str(KEYS)})


def mean_pss(points):
    """Total PSS averaged over the requests served (trapezoids between the points)."""
    area = sum((b["requests"] - a["requests"]) * (a["total_pss"] + b["total_pss"]) / 2
               for a, b in zip(points, points[1:], strict=False))
    return area / points[-1]["requests"]


def point(server, requests, started, reforks):
    """One sample of the tree's memory, against the requests served so far."""
    m = memory(server)
    return {"requests": requests, "seconds": round(time.monotonic() - started, 2),
            "total_pss": m["total_pss"], "pss_by_role": m["pss_by_role"],
            "processes": m["processes"], "reforks": reforks,
            "worker_uss": statistics.mean(m["worker_uss"]) if m["worker_uss"] else None}


def settle(server, timeout):
    """Wait until every refork the log announced is done (or abandoned) and W serve."""
    def reforks_over():
        log = server.alive() and server.log()
        return len(REFORK.findall(log)) == len(REFORK_END.findall(log))

    wait_for(reforks_over, timeout, "the reforks of %s to end" % server.name, 0.1)
    server.wait_workers(timeout)


def run_config(name, root, args):
    """One configuration through the whole load -> {"points", "final", "reforks", ...}."""
    with Servers() as servers:
        server = servers.start(make_server(name, root, args), timeout=args.timeout)
        started, served, failed, seen, seconds = time.monotonic(), 0, 0, 0, args.chunk
        points = [point(server, 0, started, [])]
        while served < args.requests:
            load = loadgen.PythonLoad(server.port, PATH, KEYS, args.workers,
                                      max_seconds=seconds + args.timeout).start()
            time.sleep(seconds)
            samples = load.stop()
            served += sum(ok for _, _, ok in samples)
            failed += sum(not ok for _, _, ok in samples)
            # The last chunk is cut to what the last rate needs: the same count everywhere.
            seconds = min(args.chunk, max(0.1, (args.requests - served) / len(samples)
                                          * seconds)) if samples else args.chunk
            reforks = [reason for _, reason in REFORK.findall(server.log())]
            points.append(point(server, served, started, reforks[seen:]))
            seen = len(reforks)
        settle(server, args.timeout)
        final = point(server, served, started, [])
        log = server.log()
    if servers.killed:
        raise BenchError("processes outlived %s: %s" % (name, servers.killed))
    return {"points": points, "final": final, "failed": failed,
            "reforks": [reason for _, reason in REFORK.findall(log)],
            "abandoned": [m.group(0) for m in REFORK_END.finditer(log)
                          if m.group(1) == "abandoned"]}


def run_ideal(root, args):
    """Plain gunicorn, one worker that built the whole memo: master + worker PSS."""
    with Servers() as servers:
        ideal = Server(IDEAL, root, APP, [], "", 1, {"CHURN_KEYS": str(KEYS)})
        server = servers.start(ideal, timeout=args.timeout)
        answer = server.get_json("/warm", timeout=args.timeout)
        if answer["memo"] != KEYS:
            raise BenchError("the ideal worker holds %s keys, not %d" % (answer["memo"], KEYS))
        m = memory(server)
    return {"final": {"total_pss": m["total_pss"], "pss_by_role": m["pss_by_role"],
                      "processes": m["processes"]}}


def run(args, workdir):
    """Every round: each configuration, then the ideal, in alternating order."""
    names = [*CONFIGS, IDEAL]
    runs = {name: [] for name in names}
    for round_no in range(args.rounds):
        for name in names if round_no % 2 == 0 else names[::-1]:
            root = workdir / ("%s-%d" % (name.split()[0], round_no))
            started = time.monotonic()
            result = run_ideal(root, args) if name == IDEAL else run_config(name, root, args)
            runs[name].append(result)
            print("round %d %-34s %5.0f s  final total PSS %6.1f MiB  reforks %s  failed %s"
                  % (round_no + 1, name, time.monotonic() - started,
                     result["final"]["total_pss"], len(result.get("reforks", ())),
                     result.get("failed", "-")), flush=True)
    return {"benchmark": "memory_lifecycle", "app": APP, "keys": KEYS, "args": vars(args),
            "revision": product_source()["git"], "runs": runs}


def summarize(result):
    """Medians over rounds and the targets; prints the tables. -> the missed targets."""
    runs = result["runs"]
    final = {name: statistics.median(r["final"]["total_pss"] for r in rs)
             for name, rs in runs.items()}
    print("\n%d workers, %d requests per run to /item/{1..%d}, %d round(s); MiB; "
          "gunicorn_smartspawn %s\n" % (result["args"]["workers"], result["args"]["requests"],
                                        KEYS, len(runs[IDEAL]), result["revision"]))
    print("| configuration | final total PSS (median) | min-max | x ideal | mean over the "
          "run | reforks per run | failed | final PSS by role (round 1) |\n"
          "|---|---:|---:|---:|---:|---|---:|---|")
    for name, rs in runs.items():
        totals = [r["final"]["total_pss"] for r in rs]
        roles = sorted(rs[0]["final"]["pss_by_role"].items())
        print("| %s | %.1f | %.0f-%.0f | %.2f | %s | %s | %s | %s |" % (
            name, final[name], min(totals), max(totals), final[name] / final[IDEAL],
            "%.1f" % statistics.median(mean_pss(r["points"]) for r in rs)
            if name != IDEAL else "-",
            [len(r["reforks"]) for r in rs] if name != IDEAL else "-",
            sum(r["failed"] for r in rs) if name != IDEAL else "-",
            ", ".join("%s %.0f" % kv for kv in roles)))
    for name, rs in runs.items():
        for n, r in enumerate(rs):
            print("round %d %s: reforks %s%s" % (n + 1, name, r.get("reforks", "-"), (
                "; abandoned: %s" % r["abandoned"]) if r.get("abandoned") else ""))
    d = "d refork_on_memory"
    best = min(final["b fork_worker=1000"], final["c fork_worker=[100,400,1600,6400]"])
    failed = sum(r.get("failed", 0) for rs in runs.values() for r in rs)
    targets = {"d final PSS <= best of b, c": (final[d] / best, final[d] <= best),
               "d final PSS <= %.1f x ideal" % TARGET_IDEAL_RATIO:
                   (final[d] / final[IDEAL], final[d] <= TARGET_IDEAL_RATIO * final[IDEAL]),
               "failed requests = 0": (failed, failed == 0)}
    print("\n| target | value | |\n|---|---:|---|")
    for label, (value, met) in targets.items():
        print("| %s | %.2f | %s |" % (label, value, "met" if met else "MISSED"))
    if not any("memory" in reason for r in runs[d] for reason in r["reforks"]):
        print("note: d never reforked on memory (is refork_on_memory in this revision?)")
    result.update(final_total_pss=final, mean_total_pss={
        name: statistics.median(mean_pss(r["points"]) for r in rs)
        for name, rs in runs.items() if name != IDEAL}, targets={
        label: {"value": value, "met": met} for label, (value, met) in targets.items()})
    return [label for label, (_, met) in targets.items() if not met]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 12 000 requests")
    parser.add_argument("--rounds", type=int, help="rounds of all configurations (2)")
    parser.add_argument("--requests", type=int, help="requests per run (60000)")
    parser.add_argument("--workers", type=int, default=4, help="workers = clients (4)")
    parser.add_argument("--chunk", type=float, default=1.0, help="s of load per sample (1)")
    parser.add_argument("--sample-interval", type=float, default=1.0,
                        help="d: memory_sample_interval, s (1; product default 5)")
    parser.add_argument("--min-interval", type=float,
                        help="d: refork_min_interval, s (10, --quick 4; product default 30)")
    parser.add_argument("--idle-preloader", type=float, metavar="S",
                        help="add preloader_idle_timeout = S to a-d (default: off)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of waits (60)")
    parser.add_argument("--out", default="/tmp/smartspawn-bench", help="where the PNG goes")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.requests = args.requests or (12000 if args.quick else 60000)
    args.min_interval = args.min_interval or (4.0 if args.quick else 10.0)
    result = run_in_tmpdir("ssbench-lifecycle-", run, args)
    if result is None:
        return 2
    missed = summarize(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if plots.memory_lifecycle(result["runs"], out / "memory_lifecycle.png"):
        print("\nplot: %s" % (out / "memory_lifecycle.png"))
    else:
        print("\n" + plots.MISSING)
    write_json(args.json, result)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
