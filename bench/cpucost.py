"""Per-request CPU cost: what a server spends on each request, compared side by side.

Throughput measured in turns (plain, then smartspawn, ...) follows whatever else the
machine runs during each turn: on a shared 2-core machine single rounds of hello-world
differ by ±10-20 %. What a server costs per request is steadier, and is what its
throughput is made of when the CPU is the limit (requests/s = CPUs / CPU per request).

The method: the servers are loaded at the same time, each by its own load generator,
for the same window; the servers' processes are pinned to one half of the CPUs and the
load generators to the other, so that the servers share the same CPU under the same
conditions and no server shares a CPU with a client. A server's CPU is the on-CPU time
(user + system) of every process of its session, the master, the workers and, for
smartspawn, the preloader and the standby (they are the cost of the design), read from
/proc/PID/task/TID/schedstat in nanoseconds (psutil's tick-rounded cpu_times where that
file is missing). Per round: CPU / requests served, for each server; the figure compared
is the requests per CPU-second of a server relative to the first (plain gunicorn):
cpu_us(first) / cpu_us(server), >= 0.98 meaning "costs at most ~2 % more".
"""
import contextlib
import os
import statistics
import threading

from bench import loadgen

ROUNDS = 8
SECONDS = 2


def split_cpus(cpus):
    """(client CPUs, server CPUs): the lower half for the clients, the upper half for the
    servers; None on one CPU (nothing to pin apart)."""
    cpus = sorted(cpus)
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def pin_session(server, cpus):
    """Every thread of every process of `server`'s session on `cpus` (their children
    inherit it)."""
    for proc in server.session():
        try:
            tids = os.listdir("/proc/%d/task" % proc.pid)
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass  # exited meanwhile


@contextlib.contextmanager
def pinned(servers):
    """Servers on one half of the CPUs, this process (and the clients it starts) on the
    other; every affinity back to all CPUs afterwards. -> True if pinned."""
    everything = os.sched_getaffinity(0)
    halves = split_cpus(everything)
    if halves is None:
        yield False
        return
    clients, serving = halves
    try:
        for server in servers:
            pin_session(server, serving)
        os.sched_setaffinity(0, clients)
        yield True
    finally:
        os.sched_setaffinity(0, everything)
        for server in servers:
            pin_session(server, everything)


def load_together(servers, path, connections, seconds, workdir, ids=0):
    """Load every server at once for `seconds` (one load generator each) ->
    {name: loadgen figures + "cpu_us": the server's CPU per request in µs}."""
    before = {s.name: s.cpu_seconds() for s in servers}
    results, failed = {}, []

    def load(server):
        try:
            results[server.name] = loadgen.run(server.port, path, ids, connections, seconds,
                                               workdir / server.name)
        except Exception as exc:  # re-raised below, in this thread
            failed.append(exc)

    threads = [threading.Thread(target=load, args=(s,)) for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]
    after = {s.name: s.cpu_seconds() for s in servers}
    for server in servers:
        server.alive()
        result = results[server.name]
        result["cpu_us"] = cpu_per_request(before[server.name], after[server.name],
                                           result["requests"])
    return {s.name: results[s.name] for s in servers}


def cpu_per_request(before, after, requests):
    """µs of CPU per request over a window (seconds before and after)."""
    return (after - before) / max(requests, 1) * 1e6


def measure(servers, path, connections, workdir, rounds=ROUNDS, seconds=SECONDS, ids=0,
            echo=print):
    """One unmeasured round, then `rounds` rounds of all servers together, pinned.
    -> {"pinned", "rounds", "seconds", "runs": {name: [figures]}, "ratios": {name:
    summary of per-round cpu_us(first) / cpu_us(name)}} (servers[0] is the base)."""
    for server in servers:
        (workdir / server.name).mkdir(parents=True, exist_ok=True)
    runs = {s.name: [] for s in servers}
    with pinned(servers) as pin:
        load_together(servers, path, connections, 1, workdir, ids)  # settle where pinned
        for round_no in range(rounds):
            together = load_together(servers, path, connections, seconds, workdir, ids)
            for name, result in together.items():
                runs[name].append(result)
            echo("%-22s cpu round %d  %s" % (path, round_no + 1, "  ".join(
                "%s %.1f us/req (%.0f req/s)" % (name, r["cpu_us"], r["rps"])
                for name, r in together.items())))
    return {"pinned": pin, "rounds": rounds, "seconds": seconds, "connections": connections,
            "runs": runs, "ratios": efficiency_ratios(runs)}


def efficiency_ratios(runs):
    """{name: ratio summary} of the per-round requests per CPU-second of each server to
    the first one's: cpu_us(first) / cpu_us(name) (the rounds were run together)."""
    names = list(runs)
    base = runs[names[0]]
    return {name: summarize_ratios([a["cpu_us"] / b["cpu_us"]
                                    for a, b in zip(base, runs[name], strict=True)])
            for name in names[1:]}


def summarize_ratios(ratios):
    """Median, lowest, highest and `spread` (the largest distance of a single round from
    the median, as a share of it) of per-round ratios."""
    median = statistics.median(ratios)
    return {"median": median, "min": min(ratios), "max": max(ratios), "n": len(ratios),
            "spread": max(median - min(ratios), max(ratios) - median) / median}


def text(summary, unit=""):
    """"0.903 (0.897–0.909, ±0.7 %, 8 rounds)", `unit` after the median."""
    return "%.3f%s (%.3f–%.3f, ±%.1f %%, %d rounds)" % (
        summary["median"], unit, summary["min"], summary["max"], 100 * summary["spread"],
        summary["n"])
