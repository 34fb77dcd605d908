#!/usr/bin/env python
"""Spawn-to-first-response latency of a worker forked from a template (after a refork).

The third case next to spawn_latency.py's "smart" and "direct", on the same app
(apps/heavy_import.py, ~1 s and ~140 MB to import) and the same round (SIGTTIN while
every worker is held busy, then GET /pid: only the new worker can answer it):

1. `gunicorn -k smartspawn.Worker -w 2` with `fork_worker = 10**9` (on; only our SIGURG
   reforks); SIGURG; wait for "refork to generation 2 ... done" in the log and for the
   "smartspawn template" process;
2. each round: POST /hold to each of the 2 workers (spawn_latency.HeldRequest), t0,
   SIGTTIN, GET /pid, t1; checks: a new pid, child of the master, listed by the server's
   state (`smartspawn status`) as spawned_from "template"; release; SIGTTOU and wait for
   2 workers again.

`--smart` first measures the same rounds before the refork, from the preloader: smart
and template spawns of one server without spawn_latency.py's direct rounds, which take
~10 s each on a heap ten times larger (`--records 1700000`, the full run's `heap10`).

    python -m bench.template_spawn [--quick] [--repeats N] [--smart] [--records N]
                                   [--json PATH]
"""
import argparse
import json
import signal
import sys
import time

import psutil

from bench import spawn_latency
from bench.server import (SMARTSPAWN, BenchError, Server, Servers, run_in_tmpdir, uss_mb,
                          wait_for, write_json)
from gunicorn_smartspawn.cli import status

WORKERS = 2


def spawned_from(server, pid, timeout):
    """The server's own record of where worker `pid` came from (its state file)."""
    def lookup():
        rows = status.load_state(server.proc.pid)["processes"]
        return next((row.get("spawned_from") for row in rows if row["pid"] == pid), None)
    return wait_for(lookup, timeout, "worker %s in the server's state file" % pid, 0.1)


def measure_once(server, timeout):
    before = server.worker_pids()
    held = []
    try:
        for _ in before:
            held.append(spawn_latency.HeldRequest(server.port, timeout))
        if {h.pid for h in held} != before:
            raise BenchError("/hold was served by %s, not the workers %s"
                             % ([h.pid for h in held], sorted(before)))
        t0 = time.monotonic()
        server.signal(signal.SIGTTIN)
        code, body = server.get("/pid", timeout)
        t1 = time.monotonic()
        info = json.loads(body) if code == 200 else {}
        new_pid = info.get("pid")
        if new_pid is None or new_pid in before or info.get("ppid") != server.proc.pid:
            raise BenchError("/pid answered %s %r: not a new child of the master %s"
                             % (code, body, server.proc.pid))
        uss = uss_mb(new_pid)
        for request in held:
            request.release()
    finally:
        for request in held:
            request.close()
    origin = spawned_from(server, new_pid, timeout)
    # gunicorn stops the oldest worker; reaped, not only exited (spawn_latency.py: until
    # the master reaps it, the next round's TTIN would spawn nothing).
    server.signal(signal.SIGTTOU)

    def back():
        workers = server.worker_pids()
        return (len(workers) == WORKERS and new_pid in workers
                and not any(psutil.pid_exists(pid) for pid in before - workers))
    wait_for(back, timeout, "the server back to %d workers" % WORKERS, interval=0.01)
    return {"ms": (t1 - t0) * 1e3, "pid": new_pid, "spawned_from": origin,
            "import_seconds": info.get("import_seconds"), "uss_mb": uss}


def rounds(server, args, origin):
    """Warm-up and measured rounds, each spawn checked to come from `origin`."""
    samples = []
    for i in range(args.warmup + args.repeats):
        sample = measure_once(server, args.timeout)
        print("%s %2d  %8.2f ms  (worker %s, spawned from %s)" % (
            "warm-up" if i < args.warmup else "round  ", i + 1, sample["ms"],
            sample["pid"], sample["spawned_from"]), flush=True)
        if sample["spawned_from"] != origin:
            raise BenchError("worker %s was spawned from the %s, not the %s"
                             % (sample["pid"], sample["spawned_from"], origin))
        if i >= args.warmup:
            samples.append(sample)
    return samples


def run(args, workdir):
    env = {"HEAVY_IMPORT_RECORDS": str(args.records),
           "HEAVY_IMPORT_SECONDS": str(args.import_seconds)}
    found = {}
    with Servers() as started:
        server = started.start(Server("template", workdir / "template", "heavy_import:app",
                                      SMARTSPAWN, "fork_worker = 10**9\n", WORKERS, env),
                               timeout=args.timeout)
        if args.smart:
            found["smart"] = rounds(server, args, "preloader")
        server.signal(signal.SIGURG)
        server.wait_log(r"refork to generation 2 .* done", args.timeout)
        wait_for(lambda: any("smartspawn template" in t for t in server.children().values()),
                 args.timeout, "the template process")
        found["template"] = rounds(server, args, "template")
    if started.killed:
        raise BenchError("processes outlived the server: %s" % started.killed)
    return {"benchmark": "template_spawn",
            "metric": "ms from SIGTTIN to the new worker's first response",
            "config": {"repeats": args.repeats, "warmup": args.warmup,
                       "records": args.records, "import_seconds": args.import_seconds},
            **{kind: spawn_latency.summarize(samples) for kind, samples in found.items()},
            "samples": found["template"],
            **({"smart_samples": found["smart"]} if args.smart else {})}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="--repeats 3")
    parser.add_argument("--repeats", type=int, help="measured rounds (10; --quick: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds (1)")
    parser.add_argument("--records", type=int, default=170000,
                        help="records the app builds at import (170000, as spawn_latency)")
    parser.add_argument("--import-seconds", type=float, default=1.0,
                        help="minimum app import time (1.0, as spawn_latency)")
    parser.add_argument("--smart", action="store_true",
                        help="first the same rounds from the preloader, before the refork")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each wait")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 10)
    result = run_in_tmpdir("ssbench-template-", run, args)
    if result is None:
        return 2
    for kind, label in (("smart", "from the preloader"), ("template", "from a template")):
        if kind in result:
            t = result[kind]
            print("\n%s: median %.2f ms (min %.2f, max %.2f, n %d); worker USS %.1f MB"
                  % (label, t["median_ms"], t["min_ms"], t["max_ms"], t["n"],
                     t["worker_uss_mb_median"]))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
