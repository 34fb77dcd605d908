"""`smartspawn status`: what each process of a running server really costs and does.

Roles, generations, request counts, requests in flight and heartbeats come from the
server's state file (state.py, snapshot.py), read where the server wrote it: in its own
temporary directory as it sees it, through /proc/PID/root (systemd's PrivateTmp=true gives
a service a /tmp of its own, and its $TMPDIR may not be ours). Memory and CPU time come
from the kernel through psutil, and the memory cgroup's figures from its files
(cgroup.py). RSS counts
shared pages in every process that maps them, so the real cost of the server is the sum
of PSS (each shared page divided among its sharers); USS is what a process alone holds.
"""
import argparse
import json
import os
import sys
import time

import psutil

from gunicorn_smartspawn.shared import cgroup, state

MIB = 1024 * 1024


class StatusError(Exception):
    """The server could not be found or read; the message says why."""


def find_master(pid=None, pidfile=None, directory=None):
    """The master pid to report on, from --pid, --pidfile or the only live server."""
    if pidfile:
        try:
            with open(pidfile) as f:
                return checked_pid(int(f.read().strip()), "the pid in %s" % pidfile)
        except (OSError, ValueError) as exc:
            raise StatusError("cannot read a pid from %s: %s" % (pidfile, exc)) from None
    if pid is not None:  # --pid 0 names no process: not "whichever server runs"
        return checked_pid(pid, "--pid")
    live = live_masters(directory)
    if len(live) == 1:
        return live[0]
    if not live:
        where = directory or ("the temporary directory of each gunicorn process of uid %d"
                              % os.getuid())
        raise StatusError("no running smartspawn server found in %s (give --pid or --pidfile)"
                          % where)
    raise StatusError("several smartspawn servers are running (masters %s): give --pid"
                      % ", ".join(map(str, live)))


def checked_pid(pid, what):
    """`pid` if a process can have it; else StatusError naming `what` (0, a negative
    number or one past the kernel's limit: psutil would raise OverflowError)."""
    if not 1 <= pid < pid_max():
        raise StatusError("%s: %d is not a process id (1 to %d)" % (what, pid, pid_max() - 1))
    return pid


def pid_max():
    """One more than the largest pid the kernel gives."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4194304  # the kernel's ceiling (PID_MAX_LIMIT on 64-bit)


def live_masters(directory=None):
    """The live masters with a state file in `directory`; by default, the gunicorn (or
    smartspawn) processes of our user with a state file in their own view of their
    temporary directory (server_state_path): the masters of our servers."""
    if directory is None:
        return sorted(proc.pid for proc in psutil.process_iter(["uids", "cmdline"])
                      if maybe_ours(proc.info) and has_state_file(proc.pid))
    try:
        names = os.listdir(trusted_dir(directory))
    except FileNotFoundError:
        return []
    pids = [int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit()]
    return sorted(pid for pid in pids if 0 < pid < pid_max() and psutil.pid_exists(pid))


def maybe_ours(info):
    """A process of our user started as gunicorn or smartspawn (or titled so)."""
    return (info["uids"] is not None and info["uids"].real == os.getuid()
            and any("gunicorn" in arg or "smartspawn" in arg for arg in info["cmdline"] or ()))


def has_state_file(pid):
    try:
        server_state_path(pid)
    except StatusError:
        return False
    return True


def server_state_path(pid):
    """The state file of master `pid`, as seen from here.

    The master writes it in its own temporary directory (state.state_dir), which may not
    be ours: a $TMPDIR of its own, or systemd's PrivateTmp=true (a /tmp in its own mount
    namespace). It keeps that directory open (state.held): /proc/PID/fd names it as the
    master sees it, and /proc/PID/root resolves that path in the master's mount
    namespace. Reading either needs the server's user or root.
    """
    fds = "/proc/%d/fd" % pid
    try:
        uids = psutil.Process(pid).uids()
        names = os.listdir(fds)
    except (psutil.NoSuchProcess, FileNotFoundError):
        raise StatusError("no process %d" % pid) from None
    except PermissionError:
        raise StatusError("cannot read %s (where process %d keeps its state directory "
                          "open): permission denied; run as the server's user (or root)"
                          % (fds, pid)) from None
    wanted = state.dir_name(uids.real)
    for name in names:
        try:
            held = os.readlink(os.path.join(fds, name))
        except OSError:
            continue  # closed meanwhile
        if held.startswith("/") and os.path.basename(held) == wanted:
            directory = "/proc/%d/root%s" % (pid, held)
            try:
                trusted_dir(directory, uids.effective)
            except FileNotFoundError:
                continue  # removed: the master holds the new one within a second
            return state.state_path(pid, directory)
    raise StatusError("no state file at %s/*: process %d is not a smartspawn master (a master "
                      "keeps its state directory, %s, open), it is stopping, its state "
                      "directory was just removed (it makes a new one within a second: try "
                      "again), or it could not write its state file (its log says why)"
                      % (fds, pid, wanted))


def trusted_dir(directory, owner=None):
    """`directory` if only we (or uid `owner`) can have written it (state.private_dir);
    FileNotFoundError when it does not exist."""
    try:
        return state.private_dir(directory, owner=owner)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StatusError("%s; not reading it (the server does not write there either)"
                          % exc) from None


def load_state(master_pid, directory=None):
    """Master `master_pid`'s state, from `directory` (--state-dir) or where it wrote it."""
    if not psutil.pid_exists(master_pid):
        raise StatusError("no process %d" % master_pid)
    try:
        if directory is None:
            path = server_state_path(master_pid)
        else:
            path = state.state_path(master_pid, directory)
            trusted_dir(directory)
        return state.read(path)
    except FileNotFoundError:
        raise StatusError("no state file at %s: process %d is not a smartspawn master, or "
                          "it was started with another TMPDIR (give --state-dir)"
                          % (path, master_pid)) from None
    except PermissionError:
        raise StatusError("cannot read %s: run as the server's user (or root)"
                          % path) from None
    except ValueError as exc:
        raise StatusError(str(exc)) from None


def process_rows(server_state):
    """One dict per process: the server's fields plus the kernel's figures."""
    try:
        return state.process_rows(server_state)
    except psutil.AccessDenied as exc:
        raise StatusError("cannot read the memory of pid %d: run as the server's user "
                          "(or root)" % exc.pid) from None


def add_cpu_percent(rows, previous, now):
    """--watch: each row's CPU use since the previous report, in % of one core (None for
    a process that was not in it). `previous`: {pid: (cpu_seconds, when)}; returns the
    one for the next report."""
    for row in rows:
        before = previous.get(row["pid"])
        row["cpu_percent"] = (round(100 * (row["cpu_seconds"] - before[0]) / (now - before[1]), 1)
                              if before and now > before[1] else None)
    return {row["pid"]: (row["cpu_seconds"], now) for row in rows}


def cgroup_memory(master_pid):
    """The master's memory cgroup (the container's, under Docker or Kubernetes), as a
    dict; None when it is in none, or it cannot be read."""
    try:
        memory = cgroup.memory_of(master_pid)
    except OSError:
        return None
    return memory._asdict() if memory else None


OUT_OF_BAND = ("oob_concurrency", "oob_grants", "oob_most_at_once", "oob_extra_workers")


def report(server_state, rows, cgroup_figures=None):
    totals = {key: sum(row[key] for row in rows) for key in ("rss", "pss", "uss")}
    return {"time": round(time.time(), 3), "state_updated": server_state["updated"],
            "smartspawn_version": server_state["smartspawn_version"],
            "gunicorn_version": server_state["gunicorn_version"],
            "master": server_state["master"], "proc_name": server_state["proc_name"],
            "generation": server_state["generation"],
            "spawn_method": server_state["spawn_method"],
            "workers_target": server_state["workers_target"],
            "reforks": server_state["reforks"],
            "preloader_running": server_state["preloader_running"],
            "lifecycle": server_state["lifecycle"], "cgroup": cgroup_figures,
            # Out-of-band work (master/outofband.py); absent from an older server's state.
            "out_of_band": {key: server_state.get(key) for key in OUT_OF_BAND},
            "processes": rows, "totals": totals}


# The table's columns: (heading, width, the text for a row). Figures the server could not
# give (a master has no request count) are "-".
COLUMNS = [
    ("ROLE", -20, lambda row: row["role"]),
    ("PID", 7, lambda row: row["pid"]),
    ("GEN", 3, lambda row: row.get("generation", "-")),
    ("AGE", 6, lambda row: duration(row["age_seconds"])),
    ("STATE", 9, lambda row: state_text(row)),
    ("INFLT", 5, lambda row: dash(row.get("in_flight"))),
    ("REQUESTS", 8, lambda row: row.get("requests", "-")),
    ("LAST REQ", 8, lambda row: dash(row.get("last_request"), duration)),
    ("BEAT", 5, lambda row: dash(row.get("last_heartbeat"), duration)),
    ("CPU s", 7, lambda row: "%.1f" % row["cpu_seconds"]),
    ("OOB GC", 6, lambda row: row.get("oob_collections", "-")),
    ("OOB s", 6, lambda row: dash(row.get("oob_microseconds"),
                                  lambda us: "%.3f" % (us / 1e6))),
    ("RSS MiB", 8, lambda row: mib(row["rss"])),
    ("PSS MiB", 8, lambda row: mib(row["pss"])),
    ("USS MiB", 8, lambda row: mib(row["uss"])),
    ("SHARED MiB", 10, lambda row: mib(row["shared"])),
]
# --watch: the CPU use over the last interval, after the total.
CPU_PERCENT = ("CPU %", 6, lambda row: dash(row.get("cpu_percent"), lambda p: "%.1f" % p))


def dash(value, text=str):
    return "-" if value is None else text(value)


def state_text(row):
    """disabled (worker disable), "oob 1.2s" (out-of-band work for that long so far;
    "oob wait": asked, not granted yet), busy (a request in flight) or idle."""
    if row.get("disabled"):
        return "disabled"
    if row.get("oob"):
        if row["oob"] == "waiting":
            return "oob wait"
        return "oob " + dash(row.get("oob_working_for"), duration)  # how long so far
    busy = row.get("busy")
    return "-" if busy is None else "busy" if busy else "idle"


def mib(size):
    return "%.1f" % (size / MIB)


def duration(seconds):
    """2.5s, 42s, 3m05s, 2h14m: short enough for a column; below zero, -2.5s, -3m05s (a
    heartbeat that extend_deadline put in the future)."""
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds < 10:
        return "%.1fs" % seconds
    seconds = int(seconds)
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    return "%dh%02dm" % divmod(seconds // 60, 60)


def table_line(columns, texts):
    cells = ("%*s" % (width, text) for (_, width, _), text in zip(columns, texts, strict=True))
    return " ".join(cells).rstrip()


def render(status):
    watched = any("cpu_percent" in row for row in status["processes"])
    columns = COLUMNS + ([CPU_PERCENT] if watched else [])
    lines = [header_line(status),
             "%s, master %d, generation %d, %s spawning, %d reforks"
             % (status["proc_name"], status["master"], status["generation"],
                status["spawn_method"], status["reforks"]),
             cgroup_line(status["cgroup"]),
             lifecycle_line(status),
             *immortal_lines(status),
             table_line(columns, [heading for heading, _, _ in columns])]
    for row in status["processes"]:
        lines.append(table_line(columns, [text(row) for _, _, text in columns]))
    totals = status["totals"]
    total = {heading: mib(totals[key]) for heading, key in (
        ("RSS MiB", "rss"), ("PSS MiB", "pss"), ("USS MiB", "uss"))}
    lines.append(table_line(columns, [
        "total (%d processes)" % len(status["processes"]) if heading == "ROLE"
        else total.get(heading, "") for heading, _, _ in columns]))
    lines.append("The server's real memory cost is the total PSS; RSS counts shared "
                 "pages once per process.")
    return "\n".join(lines)


def header_line(status):
    return ("smartspawn %s, gunicorn %s; %s (the server's state is %.1fs old)" % (
        status["smartspawn_version"], status["gunicorn_version"],
        time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(status["time"])),
        max(0.0, status["time"] - status["state_updated"])))


def cgroup_line(figures):
    if figures is None:
        return "memory cgroup: none (no memory controller, or not readable here)"
    used = "memory cgroup v%d %s: %s MiB used" % (figures["version"], figures["path"],
                                                   mib(figures["usage_bytes"]))
    limit = figures["limit_bytes"]
    if limit is None:
        return used + ", no limit"
    return used + " of a %s MiB limit (%.0f%%)" % (mib(limit),
                                                   100 * figures["usage_bytes"] / limit)


def lifecycle_line(status):
    figures = status["lifecycle"]
    preloader = "running" if status["preloader_running"] else "not running"
    if figures["preloader_idle_exits"]:
        preloader += " (%d idle exits)" % figures["preloader_idle_exits"]
    return ("replaced: %d at max_requests, %d at max_worker_memory; %d memory samples, "
            "%d reforks on memory; preloader %s" % (
                figures["replaced_max_requests"], figures["replaced_max_worker_memory"],
                figures["memory_samples"], figures["memory_reforks"], preloader))


def immortal_lines(status):
    """gc_freeze = "immortal": what each spawner's pass made immortal, and how fast."""
    return ["gc_freeze immortal: %s (pid %d) made %d objects immortal in %.3fs" % (
        row["role"], row["pid"], row["immortal"]["objects"], row["immortal"]["seconds"])
        for row in status["processes"] if "immortal" in row]


def collect(args):
    master = find_master(args.pid, args.pidfile, args.state_dir)
    server_state = load_state(master, args.state_dir)
    return report(server_state, process_rows(server_state), cgroup_memory(master))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="smartspawn status",
        description="Per-process memory (RSS, PSS, USS) and roles of a running "
                    "gunicorn -k smartspawn.Worker server.")
    parser.add_argument("command", choices=["status"], help="what to show")
    parser.add_argument("--pid", type=int, help="the master's pid")
    parser.add_argument("--pidfile", help="gunicorn's pidfile (--pid of gunicorn)")
    parser.add_argument("--state-dir", help="where servers publish their state (default: "
                        "each server's own temporary directory, as it sees it)")
    parser.add_argument("--json", action="store_true", help="print JSON (with --watch: "
                        "one document per line, JSON Lines)")
    parser.add_argument("--watch", type=float, metavar="SECONDS",
                        help="refresh every SECONDS until interrupted (or --count)")
    parser.add_argument("--count", type=int, metavar="N",
                        help="with --watch: stop after N reports")
    args = parser.parse_args(argv)
    if args.count is not None and (not args.watch or args.count < 1):
        parser.error("--count N needs --watch and N >= 1")
    if args.watch is not None and args.watch <= 0:
        parser.error("--watch SECONDS must be above 0")
    # Clear the screen between reports only on a terminal: a pipe or a file gets the
    # reports one after another, with no control codes.
    clear = args.watch and not args.json and sys.stdout.isatty()
    printed, cpu_before = 0, {}
    try:
        while True:
            status = collect(args)
            if args.watch:
                cpu_before = add_cpu_percent(status["processes"], cpu_before,
                                             time.monotonic())
            if clear:
                print("\033[H\033[J", end="")
            elif printed and not args.json:
                print()  # a blank line between two reports
            if args.json:
                print(json.dumps(status) if args.watch else json.dumps(status, indent=2))
            else:
                print(render(status))
            sys.stdout.flush()
            printed += 1
            if not args.watch or printed == args.count:
                return 0
            time.sleep(args.watch)
    except StatusError as exc:
        print("smartspawn status: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `smartspawn status | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
