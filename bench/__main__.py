"""`python -m bench [--quick] [--steps S,...] [--out DIR]`: every comparison in one run.

Runs each benchmark as a subprocess with --json (one after the other, never two at once):

  spawn     bench/spawn_latency.py   direct vs smart spawn-to-first-response
  template  bench.template_spawn     the same, from a template worker after a refork
  memory    bench/refork_memory.py   total PSS: plain, --preload, +gc.freeze, smart, refork
  load      bench.load               latency/throughput: plain gunicorn vs smartspawn
  oob       bench/oob_latency.py     plain gunicorn vs smartspawn + oob_gc (if in the tree)
  oobcoord  bench.oob_coordination   oob_concurrency 1 vs 4 under load; a lone worker's
                                     2 s of out-of-band work vs plain gunicorn
  events    bench.events             refork and HUP under load
  lifecycle bench/memory_lifecycle.py  total PSS over a long run: no refork, fork_worker,
                                     refork_on_memory (full mode only: 4-65 min)
  recycle   bench/recycle_latency.py p99 during max_requests recycling vs steady, plain
                                     gunicorn beside smartspawn, saturated and paced (full
                                     mode only: ~4 min)
  immortal  bench.immortal_pythons   gc_freeze = "immortal": total PSS after every worker
                                     read the whole heap vs one warmed process, and the
                                     pass's s per million objects, on CPython 3.13 and 3.14
                                     from .venvs/ (full mode only: ~2 min)

then writes OUT/index.md, the PNGs (with matplotlib) and OUT/results.json
(bench/report.py, bench/plots.py). OUT is a new bench-results/<UTC time>/ in the current
directory unless --out names one: `--out docs/benchmarks` rewrites the committed pages.
A step that fails is reported as failed, its output kept as OUT/<step>.log, and the
others still run. Every step has a deadline (STEP_TIMEOUT: SIGTERM, then SIGKILL 20 s
later). Every process started carries SSBENCH_RUN=<token> in its environment: at the
end, any such process still alive is listed (ps), killed, and makes the exit status 2.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench import plots, report
from bench.server import product_source

ROOT = Path(__file__).resolve().parents[1]
OOB_SCRIPT = "bench/oob_latency.py"
QUICK_BUDGET = 120.0  # s: quick mode must stay under it
# s: each step's deadline, quick and full. A full lifecycle serves 2 rounds x 4 servers x
# 60 000 requests, so its time follows the CPU it gets: 250 s in all on an idle 2-core
# machine, but 250-350 s per server at load average 8-11 and 470 s at 15-25 (other tests
# running), ~3 800 s in all, where 900 s cut it off.
STEP_TIMEOUT = {"lifecycle": (100.0, 5400.0)}
DEFAULT_STEP_TIMEOUT = (100.0, 900.0)
STEPS = ("spawn", "template", "heap10", "memory", "load", "oob", "oobcoord", "events",
         "lifecycle", "recycle", "immortal")
GENERATED = ("index.md", "results.json", "spawn_latency.png", "pss.png", "latency.png",
             "oob_latency.png", "events.png", "memory_lifecycle.png")
FULL_ONLY = "full mode only: it would not fit the quick budget"
# The spawn app with a heap ten times larger (spawn_latency.py's default is 170 000).
HEAP10_RECORDS = 1_700_000


def steps(quick, tmp):
    """[(name, argv or None, why not)] in the order of STEPS."""
    q = ["--quick"] if quick else []

    def cmd(name, target, options=q):
        return [sys.executable, *target, *options, "--json", str(tmp / ("%s.json" % name))]

    oob = (ROOT / OOB_SCRIPT).exists()
    return [("spawn", cmd("spawn", ["bench/spawn_latency.py"]), None),
            ("template", cmd("template", ["-m", "bench.template_spawn"]), None),
            ("heap10", None if quick else cmd("heap10", ["-m", "bench.template_spawn"], [
                "--smart", "--records", str(HEAP10_RECORDS), "--repeats", "8",
                "--timeout", "180"]), FULL_ONLY if quick else None),
            ("memory", cmd("memory", ["bench/refork_memory.py"]), None),
            ("load", cmd("load", ["-m", "bench.load"]), None),
            ("oob", cmd("oob", [OOB_SCRIPT], oob_options(quick)) if oob else None,
             None if oob else "not yet measured: %s is not in this tree" % OOB_SCRIPT),
            ("oobcoord", cmd("oobcoord", ["-m", "bench.oob_coordination"]), None),
            ("events", cmd("events", ["-m", "bench.events"]), None),
            ("lifecycle", None if quick else cmd(
                "lifecycle", ["bench/memory_lifecycle.py", "--out", str(tmp)]),
             FULL_ONLY if quick else None),
            ("recycle", None if quick else cmd("recycle", ["bench/recycle_latency.py"]),
             FULL_ONLY if quick else None),
            ("immortal", None if quick else cmd("immortal", ["-m", "bench.immortal_pythons"]),
             FULL_ONLY if quick else None)]


def oob_options(quick):
    """oob_latency.py's own --quick (2 rounds of 4 s, ~45 s) alone would break the quick
    budget: when it takes --rounds and --seconds, quick mode runs one round of 2 s (and 3
    rounds of its CPU per request)."""
    if not quick:
        return []
    usage = subprocess.run([sys.executable, OOB_SCRIPT, "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30).stdout
    if "--rounds" in usage and "--seconds" in usage:
        return ["--rounds", "1", "--seconds", "2"] + (
            ["--cpu-rounds", "3"] if "--cpu-rounds" in usage else [])
    return ["--quick"]


def run_step(name, argv, timeout, env):
    """Run one step, echoing its output; -> (exit status, output, seconds). A step still
    running at `timeout` s is stopped: SIGTERM, SIGKILL 20 s later."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    timers = [threading.Timer(timeout, signal_group, (proc.pid, signal.SIGTERM)),
              threading.Timer(timeout + 20, signal_group, (proc.pid, signal.SIGKILL))]
    for timer in timers:
        timer.daemon = True
        timer.start()
    output = []
    try:
        for line in proc.stdout:
            output.append(line)
            print("[%s] %s" % (name, line), end="", flush=True)
        proc.wait()
    finally:
        for timer in timers:
            timer.cancel()
        if proc.poll() is None:  # ^C: let it stop its servers
            signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode, "".join(output), time.monotonic() - started


def signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the step has exited meanwhile


def run_steps(quick, selected, out, tmp, env):
    results = {}
    for name, argv, why in steps(quick, tmp):
        (out / ("%s.log" % name)).unlink(missing_ok=True)
        if name not in selected:
            argv, why = None, "not selected (--steps)"
        if argv is None:
            print("[%s] skipped: %s" % (name, why), flush=True)
            results[name] = {"status": "not run", "why": why}
            continue
        timeout = STEP_TIMEOUT.get(name, DEFAULT_STEP_TIMEOUT)[not quick]
        code, output, seconds = run_step(name, argv, timeout, env)
        json_path = Path(argv[-1])
        ok = code == 0 and json_path.exists()
        results[name] = {"status": "ok" if ok else "failed", "exit": code, "seconds": seconds,
                         "command": display(argv, tmp),
                         "data": json.loads(json_path.read_text()) if ok else None}
        if not ok and seconds >= timeout:
            results[name]["why"] = "cut off by its deadline of %.0f s" % timeout
            print("[%s] %s" % (name, results[name]["why"]), flush=True)
        if not ok:
            (out / ("%s.log" % name)).write_text(output)
    return results


def display(argv, tmp):
    """The step's command as a reader would type it (from the repository root)."""
    return ["python"] + [a.replace(str(tmp), "$TMP") for a in argv[1:]]


def leftovers(token):
    """Pids of live processes started by this run (SSBENCH_RUN=token), other than us."""
    marker = ("SSBENCH_RUN=%s" % token).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def check_leftovers(token):
    """ps the processes this run left behind, SIGKILL them; -> their pids."""
    pids = leftovers(token)
    if pids:
        print(subprocess.run(["ps", "-o", "pid,ppid,stat,args", "-p",
                              ",".join(map(str, pids))], capture_output=True,
                             text=True).stdout)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    print("processes left behind by this run (ps, SSBENCH_RUN=%s): %s"
          % (token, pids or "none"), flush=True)
    return pids


def package(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def wrk_version():
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.split(" Copyright")[0].strip()


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor() or "?")
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo")
                  if line.startswith("MemTotal:"))
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "ram_gib": mem_kb / 2**20,
            "kernel": platform.release()}


def source_digest():
    """sha256 of the product's source files: the code measured, whatever git says."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("gunicorn_smartspawn/**/*.py"),
                        *ROOT.glob("smartspawn/**/*.py")]):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def meta(args):
    """What was measured, on what: taken before the first step."""
    wrk = wrk_version()
    source = product_source()
    command = "python -m bench" + (" --quick" if args.quick else "") + (
        " --steps %s" % ",".join(args.steps) if args.steps != list(STEPS) else "") + (
        " --out %s" % args.out if args.out else "")
    return {"command": command, "mode": "quick" if args.quick else "full",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "loadavg_start": os.getloadavg()[0], **machine(),
            "python": platform.python_version(), "gunicorn": package("gunicorn"),
            "smartspawn": package("gunicorn_smartspawn"), "git": source["git"] or "?",
            "source": source_digest(),
            "load_generator": wrk or "Python client processes (wrk not installed)",
            "packages": {name: package(name) for name in ("flask", "psutil", "matplotlib")}}


def step_list(text):
    """--steps' argument: names from STEPS, comma-separated."""
    names = [name for name in text.split(",") if name]
    unknown = sorted(set(names) - set(STEPS))
    if unknown or not names:
        raise argparse.ArgumentTypeError("unknown step(s) %s: choose from %s" % (
            ", ".join(unknown) or "(none given)", ",".join(STEPS)))
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="every step in its quick mode: under %.0f s in all" % QUICK_BUDGET)
    parser.add_argument("--steps", type=step_list, default=list(STEPS),
                        help="only these steps, comma-separated (all: %s)" % ",".join(STEPS))
    parser.add_argument("--out", help="where index.md, the PNGs and results.json go (default: "
                        "a new bench-results/<UTC time>/ here; docs/benchmarks: the "
                        "committed pages)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    out = Path(args.out or report.new_results_dir()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print("writing to %s" % out, flush=True)
    if not plots.AVAILABLE:
        print(plots.MISSING, flush=True)
    token = uuid.uuid4().hex[:12]
    env = {**os.environ, "SSBENCH_RUN": token, "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONUNBUFFERED": "1"}
    started, run_meta = time.monotonic(), meta(args)
    with tempfile.TemporaryDirectory(prefix="ssbench-all-") as tmp:
        try:
            step_results = run_steps(args.quick, args.steps, out, Path(tmp), env)
        finally:
            left = check_leftovers(token)
    for name in GENERATED:
        (out / name).unlink(missing_ok=True)
    # Others may commit or edit while this runs: record what the tree was at the end too.
    run_meta.update(seconds=time.monotonic() - started, loadavg_end=os.getloadavg()[0],
                    git_at_end=product_source()["git"] or "?",
                    source_at_end=source_digest())
    results = {"meta": run_meta, "steps": step_results, "left_behind": left}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report.write({**results, "out": out})
    seconds = results["meta"]["seconds"]
    print("wrote %s (%.0f s)" % (out / "index.md", seconds))
    failed = [name for name, s in step_results.items() if s["status"] == "failed"]
    if failed:
        print("failed steps: %s (their output: %s/<step>.log)" % (failed, out))
    if args.quick and seconds > QUICK_BUDGET:
        print("warning: quick mode took %.0f s (budget %.0f s)" % (seconds, QUICK_BUDGET))
    return 2 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main())
