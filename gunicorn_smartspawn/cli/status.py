"""`smartspawn status`: what each process of a running server really costs.

Roles, generations and request counts come from the server's state file (state.py);
memory comes from the kernel through psutil: RSS counts shared pages in every process
that maps them, so the real cost of the server is the sum of PSS (each shared page
divided among its sharers); USS is what a process alone holds.
"""
import argparse
import json
import os
import sys
import time

import psutil

from gunicorn_smartspawn.shared import state

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
    live = live_masters(directory or state.state_dir())
    if len(live) == 1:
        return live[0]
    if not live:
        raise StatusError("no running smartspawn server found in %s (give --pid or --pidfile)"
                          % (directory or state.state_dir()))
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


def live_masters(directory):
    try:
        names = os.listdir(trusted_dir(directory))
    except FileNotFoundError:
        return []
    pids = [int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit()]
    return sorted(pid for pid in pids if 0 < pid < pid_max() and psutil.pid_exists(pid))


def trusted_dir(directory):
    """`directory` if only we can have written it (state.private_dir); FileNotFoundError
    when it does not exist."""
    try:
        return state.private_dir(directory)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StatusError("%s; not reading it (the server does not write there either)"
                          % exc) from None


def load_state(master_pid, directory=None):
    if not psutil.pid_exists(master_pid):
        raise StatusError("no process %d" % master_pid)
    directory = directory or state.state_dir()
    path = state.state_path(master_pid, directory)
    try:
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


def report(server_state, rows):
    totals = {key: sum(row[key] for row in rows) for key in ("rss", "pss", "uss")}
    return {"master": server_state["master"], "proc_name": server_state["proc_name"],
            "generation": server_state["generation"],
            "spawn_method": server_state["spawn_method"],
            "workers_target": server_state["workers_target"],
            "reforks": server_state["reforks"],
            "preloader_running": server_state["preloader_running"],
            "lifecycle": server_state["lifecycle"], "processes": rows, "totals": totals}


def render(status):
    lines = ["smartspawn: %s, master %d, generation %d, %s spawning, %d reforks"
             % (status["proc_name"], status["master"], status["generation"],
                status["spawn_method"], status["reforks"]),
             lifecycle_line(status),
             *immortal_lines(status),
             "%-20s %7s %4s %8s %8s %8s %8s %9s %9s %9s %9s" % (
                 "ROLE", "PID", "GEN", "AGE", "REQUESTS", "OOB GC", "OOB s",
                 "RSS MiB", "PSS MiB", "USS MiB", "SHARED")]
    for row in status["processes"]:
        lines.append("%-20s %7d %4s %8s %8s %8s %8s %9.1f %9.1f %9.1f %9.1f" % (
            row["role"], row["pid"], row.get("generation", "-"),
            "%ds" % row["age_seconds"], row.get("requests", "-"),
            row.get("oob_collections", "-"),
            "%.3f" % (row["oob_microseconds"] / 1e6) if "oob_microseconds" in row else "-",
            row["rss"] / MIB, row["pss"] / MIB, row["uss"] / MIB, row["shared"] / MIB))
    totals = status["totals"]
    lines.append("%-20s %7s %4s %8s %8s %8s %8s %9.1f %9.1f %9.1f" % (
        "total (%d processes)" % len(status["processes"]), "", "", "", "", "", "",
        totals["rss"] / MIB, totals["pss"] / MIB, totals["uss"] / MIB))
    lines.append("The server's real memory cost is the total PSS; RSS counts shared "
                 "pages once per process.")
    return "\n".join(lines)


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
    return report(server_state, process_rows(server_state))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="smartspawn status",
        description="Per-process memory (RSS, PSS, USS) and roles of a running "
                    "gunicorn -k smartspawn.Worker server.")
    parser.add_argument("command", choices=["status"], help="what to show")
    parser.add_argument("--pid", type=int, help="the master's pid")
    parser.add_argument("--pidfile", help="gunicorn's pidfile (--pid of gunicorn)")
    parser.add_argument("--state-dir", help="where servers publish their state "
                        "(default: %s)" % state.state_dir())
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--watch", type=float, metavar="SECONDS",
                        help="refresh every SECONDS until interrupted")
    args = parser.parse_args(argv)
    try:
        while True:
            status = collect(args)
            if args.watch:
                print("\033[H\033[J", end="")
            print(json.dumps(status, indent=2) if args.json else render(status), flush=True)
            if not args.watch:
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
