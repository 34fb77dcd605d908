#!/usr/bin/env python
"""Total memory (PSS) of a 4-worker gunicorn whose workers each fill a ~100 MB lazy cache.

Configurations (bench/apps/lazy_cache.py): plain gunicorn, --preload, --preload with
gc.freeze() in when_ready, smartspawn without refork, smartspawn with fork_worker. Per run:
/cache until every worker built its cache, measure ("warm"); smart+refork only: SIGURG,
wait for "refork to generation 2 ... done", /cache until every new worker answered (it
should find the cache inherited from the template), measure ("refork"); then N more
requests per worker, each reading random records (refcount writes un-share pages),
measure ("more"). Memory: PSS from /proc/PID/smaps_rollup summed over the master and all
its descendants, and each worker's USS. Configurations alternate; medians are reported.

    python bench/refork_memory.py [--quick] [--repeats R] [--json PATH]

See bench/README.md.
"""
import argparse
import concurrent.futures
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if not __package__:  # run as `python bench/refork_memory.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.server import (SMARTSPAWN, BenchError, Server, product_source, smaps_rollup_mb,
                          write_json)

FREEZE_HOOK = "import gc\n\ndef when_ready(server):\n    gc.collect()\n    gc.freeze()\n"
CONFIGS = {  # name -> (gunicorn args, gunicorn.conf.py)
    "plain": ([], ""),
    "preload": (["--preload"], ""),
    "preload+freeze": (["--preload"], FREEZE_HOOK),
    "smart": (SMARTSPAWN, ""),
    "smart+refork": (SMARTSPAWN, "fork_worker = 10**9\n"),  # on; only our SIGURG reforks
}
ROLES = {"smartspawn preloader": "preloader", "smartspawn template": "template",
         "smartspawn standby": "standby", "worker [": "worker"}  # title substring -> role
PHASES = ("warm", "refork", "more")
SESSIONS = set()  # each master's pid, its session id (start_new_session): the ps check


def make_server(name, root, args):
    gunicorn_args, config = CONFIGS[name]
    return Server(name, root, "lazy_cache:app", gunicorn_args, config, args.workers,
                  {"LAZY_CACHE_RECORDS": str(args.records)})


def tree(server):
    """[(pid, role)]: the master and its live descendants."""
    return [(server.proc.pid, "master")] + [
        (pid, next((r for k, r in ROLES.items() if k in title), "other"))
        for pid, title in server.children(recursive=True).items()]


def drive(server, need, limit, timeout, path="/cache"):
    """4 concurrent clients GET `path` until every worker answered `need` times; at most
    `limit` requests and `timeout` s. -> {pid: [json answer, ...]}"""
    pids, answers, lock, done = server.worker_pids(), {}, threading.Lock(), threading.Event()
    budget, deadline = iter(range(limit)), time.monotonic() + timeout
    enough = lambda: all(len(answers.get(pid, ())) >= need for pid in pids)  # noqa: E731

    def client():
        try:
            while not done.is_set() and time.monotonic() < deadline:
                with lock:
                    if next(budget, None) is None:
                        return
                answer = server.get_json(path)
                with lock:
                    answers.setdefault(answer["pid"], []).append(answer)
                    if enough():
                        return
        finally:
            done.set()  # the others stop too: done, out of budget, or an error

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(client) for _ in range(4)]:
            future.result()
    if not enough():
        raise BenchError("%s: not %d answers from each of %s in %d requests / %.0f s: %s"
                         % (server.name, need, sorted(pids), limit, timeout,
                            {pid: len(a) for pid, a in answers.items()}))
    return answers


def memory(server):
    """Total PSS of the tree, PSS and process count per role, each worker's USS (MiB)."""
    out = {"total_pss": 0.0, "pss_by_role": {}, "processes": {}, "worker_uss": []}
    for pid, role in tree(server):
        fields = smaps_rollup_mb(pid)
        if fields is None:
            continue  # it exited meanwhile
        out["total_pss"] += fields["Pss"]
        out["pss_by_role"][role] = out["pss_by_role"].get(role, 0) + fields["Pss"]
        out["processes"][role] = out["processes"].get(role, 0) + 1
        if role == "worker":
            out["worker_uss"].append(fields["Private_Clean"] + fields["Private_Dirty"])
    return out


def run_one(name, root, args):
    """One server through the procedure -> {phase: memory(...), checks}."""
    server, result = make_server(name, root, args), {}
    try:
        server.launch()
        SESSIONS.add(server.proc.pid)
        server.wait_ready(args.timeout)
        answers = drive(server, 1, 400, args.timeout)
        if not all(any(a["built"] for a in answers[pid]) for pid in server.worker_pids()):
            raise BenchError("%s: a worker did not build its cache: %s" % (name, answers))
        result["warm"] = memory(server)
        if name == "smart+refork":
            old, started = server.worker_pids(), time.monotonic()
            server.proc.send_signal(signal.SIGURG)
            server.wait_log(r"refork to generation 2 .* done", args.timeout)
            result["refork_seconds"] = time.monotonic() - started
            new = server.worker_pids()
            if new & old or len(new) != args.workers:
                raise BenchError("after the refork, workers %s (before: %s)" % (new, old))
            answers = drive(server, 1, 400, args.timeout)
            templates = [pid for pid, role in tree(server) if role == "template"]
            result["inherited"] = sum(not answers[pid][0]["built"] and
                                      [answers[pid][0]["built_by"]] == templates
                                      for pid in new)
            result["refork"] = memory(server)
        answers = drive(server, args.more, args.more * args.workers * 20, args.timeout,
                        "/cache?lookups=%d" % args.lookups)
        result["more"] = memory(server)
        result["more"]["requests"] = sum(map(len, answers.values()))
        return result
    finally:
        for pid in server.stop():
            print("warning: %s: pid %s outlived the master: SIGKILL" % (name, pid))


def median(runs, phase, key):
    values = [statistics.median(r[phase][key]) if key == "worker_uss" else r[phase][key]
              for r in runs if phase in r]
    return statistics.median(values) if values else None


def report(runs, args):
    fig = {name: {phase: {key: median(runs[name], phase, key)
                          for key in ("total_pss", "worker_uss")} for phase in PHASES}
           for name in CONFIGS}
    pss = {(name, phase): fig[name][phase]["total_pss"] for name in CONFIGS for phase in PHASES}
    after, after_more = pss["smart+refork", "refork"], pss["smart+refork", "more"]
    ratios = [("after refork / before refork", after / pss["smart+refork", "warm"], 0.5),
              ("after refork / preload", after / pss["preload", "warm"], 0.5),
              ("after refork / preload+freeze", after / pss["preload+freeze", "warm"], None),
              ("after refork / plain", after / pss["plain", "warm"], None),
              ("after +N / before refork", after_more / pss["smart+refork", "warm"], None),
              ("after +N / preload after +N", after_more / pss["preload", "more"], None)]
    print("\n%d workers, cache of %d records, medians of %d repeat(s), MiB; +N: %d more "
          "/cache?lookups=%d requests per worker; gunicorn_smartspawn %s\n"
          % (args.workers, args.records, args.repeats, args.more, args.lookups, revision()))
    print("| configuration | total PSS warm | after refork | after +N | worker USS warm "
          "| after refork | after +N |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, f in fig.items():
        print("| %s | %s |" % (name, " | ".join(
            "-" if f[phase][key] is None else "%.1f" % f[phase][key]
            for key in ("total_pss", "worker_uss") for phase in PHASES)))
    print("\n| ratio of total PSS (smart+refork) | value | target |\n|---|---:|---|")
    for label, value, target in ratios:
        print("| %s | %.3f | %s |" % (label, value, "" if target is None else "≤ %.2f: %s" % (
            target, "met" if value <= target else "MISSED")))
    ref = runs["smart+refork"]
    print("\nnew workers that found the cache inherited from the template: %s of %d; "
          "refork took %s s" % ([r["inherited"] for r in ref], args.workers,
                                [round(r["refork_seconds"], 2) for r in ref]))
    return {"figures": fig, "ratios": {label: value for label, value, _ in ratios},
            "runs": runs, "args": vars(args), "revision": revision()}


def revision():
    """HEAD of this checkout, +dirty if gunicorn_smartspawn/ has uncommitted changes."""
    return product_source()["git"] or "?"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="--repeats 1")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    for flag, default, text in (
            ("--repeats", None, "rounds of all configurations (default 3; --quick: 1)"),
            ("--workers", 4, "workers per server (default 4)"),
            ("--records", 105000, "cache records (default 105000: ~100 MB)"),
            ("--more", 100, "N: requests per worker before the last measure (default 100)"),
            ("--lookups", 20, "records read by each of those requests (default 20)"),
            ("--timeout", 60.0, "deadline of each wait, s (default 60)")):
        parser.add_argument(flag, type=type(default or 0), default=default, help=text)
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="ssbench-mem-"))
    runs, ok = {name: [] for name in CONFIGS}, False
    try:
        for repeat in range(args.repeats):
            for name in CONFIGS:  # alternating: every configuration once per round
                started = time.monotonic()
                run = run_one(name, workdir / ("%s-%d" % (name, repeat)), args)
                runs[name].append(run)
                print("round %d %-15s %5.1f s  total PSS: %s" % (
                    repeat + 1, name, time.monotonic() - started, ", ".join(
                        "%s %.0f" % (p, run[p]["total_pss"]) for p in PHASES if p in run)),
                      flush=True)
        result = report(runs, args)
        write_json(args.json, result)
        ok = True
    except (BenchError, OSError) as exc:  # OSError: a request failed
        print("benchmark failed: %s" % exc, file=sys.stderr)
    finally:
        out = subprocess.run(["ps", "-e", "-o", "pid=,sid=,args="], capture_output=True,
                             text=True).stdout
        left = [line for line in out.splitlines() if int(line.split()[1]) in SESSIONS]
        print("processes left behind (ps): %s" % (left or "none"))
        if ok and not left:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("server logs kept in %s" % workdir)
    return 0 if ok and not left else 2


if __name__ == "__main__":
    sys.exit(main())
