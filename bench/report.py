"""docs/benchmarks/index.md from the results of one `python -m bench` run.

`results` is what bench/__main__.py collects: {"meta": {...}, "steps": {name: {"status",
"exit", "seconds", "command", "data"}}}, where "data" is the step's own --json output
(spawn_latency.py, template_spawn.py, refork_memory.py, load.py, oob_latency.py,
events.py, memory_lifecycle.py, recycle_latency.py, immortal_pythons.py). Every figure in
the page comes from there; plots.py draws the PNGs.
"""
import statistics
import time
from pathlib import Path

from bench import cpucost, plots
from bench.recycle_latency import pace_text

MEMORY_COMMANDS = {  # refork_memory.py's configurations, as a reader would type them
    "plain": "gunicorn -w 4 lazy_cache:app",
    "preload": "gunicorn -w 4 --preload lazy_cache:app",
    "preload+freeze": "gunicorn -w 4 --preload (when_ready: gc.collect(); gc.freeze())",
    "smart": "gunicorn -w 4 -k smartspawn.Worker lazy_cache:app",
    "smart+refork": "... -k smartspawn.Worker, fork_worker on, kill -URG <master>",
}
NOT_MEASURED = "not yet measured"


def new_results_dir():
    """Where a run writes unless told: a new folder per run, never the committed pages."""
    return Path("bench-results") / time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def fmt(value, spec="%.1f"):
    return "–" if value is None else spec % value


def verdict(met):
    return {True: "**PASS**", False: "**FAIL**", None: NOT_MEASURED}[met]


def data(results, step):
    entry = results["steps"].get(step)
    return entry["data"] if entry and entry["status"] == "ok" else None


def step_note(results, step):
    """A line saying why a section has no figures, or None when it has them."""
    entry = results["steps"].get(step)
    if entry is None or entry["status"] == "not run":
        return "*%s: %s.*" % (step, (entry or {}).get("why", NOT_MEASURED))
    if entry["status"] != "ok":
        return "*%s failed (exit status %s%s); its output is in `%s.log` beside this page.*" % (
            step, entry["exit"], ", %s" % entry["why"] if "why" in entry else "", step)
    return None


def image(drawn, alt, name):
    """The page's link to a PNG if it was drawn (without matplotlib it is not)."""
    return ["![%s](%s)" % (alt, name), ""] if drawn else []


# -- targets ------------------------------------------------------------------------------

def targets(results):
    """[(step, target, measured, met)] for the summary table; met None = not measured."""
    return [*spawn_targets(data(results, "spawn")),
            *spawn_ms_targets(data(results, "template"), data(results, "heap10")),
            *memory_targets(data(results, "memory")),
            *oob_targets(data(results, "oob")),
            *script_targets(data(results, "oobcoord"), "oobcoord"),
            *load_targets(data(results, "load")),
            *event_targets(data(results, "events")),
            *script_targets(data(results, "lifecycle"), "lifecycle"),
            *recycle_targets(data(results, "recycle")),
            *immortal_targets(data(results, "immortal"))]


SPAWN_MS = 5.0          # median spawn-to-first-response, the bench app (~155 MB)
SPAWN_MS_HEAP10 = 8.0   # the same on a heap ten times larger


def spawn_targets(spawn):
    if spawn is None:
        return [("spawn", "smart ≥ 50× faster than direct", NOT_MEASURED, None),
                ms_target("spawn", "smart spawn-to-first-response", None, SPAWN_MS)]
    ratio, smart = spawn["ratio_direct_over_smart_median"], spawn["methods"]["smart"]
    return [("spawn", "smart ≥ 50× faster than direct", "%.0f×" % ratio, ratio >= 50),
            ms_target("spawn", "smart spawn-to-first-response", smart, SPAWN_MS)]


def spawn_ms_targets(template, heap10):
    """The template's spawn on the bench app; smart and template on the larger heap."""
    rows = [ms_target("template", "template spawn-to-first-response",
                      (template or {}).get("template"), SPAWN_MS)]
    for kind in ("smart", "template"):
        rows.append(ms_target("heap10", "%s spawn-to-first-response, heap ten times larger"
                              % kind, (heap10 or {}).get(kind), SPAWN_MS_HEAP10))
    return rows


def ms_target(step, what, stats, limit):
    label = "%s ≤ %g ms (median)" % (what, limit)
    if stats is None:
        return (step, label, NOT_MEASURED, None)
    return (step, label, "%.2f ms" % stats["median_ms"], stats["median_ms"] <= limit)


def memory_targets(memory):
    names = ("total PSS after refork ≤ 0.5× before", "total PSS after refork ≤ 0.5× --preload")
    if memory is None:
        return [("memory", name, NOT_MEASURED, None) for name in names]
    before = memory["ratios"]["after refork / before refork"]
    preload = memory["ratios"]["after refork / preload"]
    return [("memory", names[0], "%.2f×" % before, before <= 0.5),
            ("memory", names[1], "%.2f×" % preload, preload <= 0.5)]


def oob_targets(oob):
    wanted = [("p99", "/garbage p99 B/A", "oob_gc: p99 ≤ 0.7× plain gunicorn"),
              ("p999", "/garbage p99.9 B/A", "oob_gc: p99.9 ≤ 0.2× plain gunicorn"),
              ("rps", "/garbage throughput B/A", "oob_gc: throughput ≥ 0.97× plain (same run)"),
              ("hello", "/hello throughput B/A", "oob_gc: hello-world throughput ≥ 0.98× plain")]
    found = (oob or {}).get("targets", {})
    rows = []
    for key, prefix, label in wanted:
        match = next((t for name, t in found.items() if name.startswith(prefix)), None)
        measured = "%.2f×" % match["value"] if match else NOT_MEASURED
        floor = (oob or {}).get("floor")
        gc_floor = (oob or {}).get("gc_floor")
        if match and key == "p99" and floor:
            measured += " (the floor: %.2f×" % floor["p99"]
            if gc_floor:
                measured += ", with gc.collect(0): %.2f×" % gc_floor["p99"]
            measured += ")"
        cpu = (oob or {}).get("cpu", {}).get("/hello")
        if match and key == "hello" and cpu:
            measured = cpu_measured(next(iter(cpu["ratios"].values())))
        rows.append(("oob", label, measured, match["met"] if match else None))
    return rows


def cpu_measured(summary):
    """A target's figure from bench/cpucost.py, with its per-round spread."""
    return "%s requests per CPU-second" % cpucost.text(summary, "×")


def load_targets(load):
    if load is None:
        return [("load", "hello-world throughput ≥ 0.98× plain (smartspawn, no oob_gc)",
                 NOT_MEASURED, None)]
    t = load["targets"]["hello throughput smartspawn/plain"]
    measured = cpu_measured(t) if "spread" in t else "%.2f×" % t["value"]
    return [("load", "hello-world throughput ≥ 0.98× plain (smartspawn, no oob_gc)",
             measured, t["met"])]


def event_targets(events):
    rows = []
    for kind, label in (("refork", "refork under load: 0 failed requests"),
                        ("hup", "HUP under load: 0 failed requests")):
        s = (events or {}).get("summary", {}).get(kind)
        rows.append(("events", label, NOT_MEASURED if s is None else
                     "%d of %d" % (s["failed"], s["requests"]),
                     None if s is None else s["failed"] == 0))
    for kind, label in (("refork", "refork under load: p99 during ≤ 1.5× steady"),
                        ("hup", "HUP under load: p99 during ≤ 1.5× steady")):
        s = (events or {}).get("summary", {}).get(kind)
        floor = (events or {}).get("summary", {}).get(kind + " floor")
        double = (events or {}).get("summary", {}).get(kind + " double-fork floor")
        measured = NOT_MEASURED if s is None else "%.2f×" % s["p99_ratio"]
        if s is not None and floor is not None:
            measured += " (the floor: %.2f×" % floor["p99_ratio"]
            if double is not None:
                measured += ", by double forks: %.2f×" % double["p99_ratio"]
            measured += ")"
        rows.append(("events", label, measured, None if s is None else s["p99_ratio"] <= 1.5))
    return rows


def script_targets(found, step):
    """A step's own {"targets": {label: {"value", "met"}}} as summary rows."""
    if found is None:
        return [(step, "%s targets" % step, NOT_MEASURED, None)]
    return [(step, label, "%.2f" % t["value"], t["met"]) for label, t in found["targets"].items()]


def recycle_targets(found):
    """recycle_latency.py's targets; each load's p99 ratio beside its floor's."""
    rows = script_targets(found, "recycle")
    for n, (step, label, measured, met) in enumerate(rows):
        load = label.rpartition(", ")[2]
        floor = (found or {}).get("summary", {}).get("%s floor" % load)
        if label.startswith("smartspawn p99") and floor and floor["during_ratio"] is not None:
            rows[n] = (step, label, "%s (the floor: %.2f)" % (measured, floor["during_ratio"]),
                       met)
    return rows


def immortal_targets(found):
    """bench/immortal_pythons.py's targets, per CPython; a row for a version skipped."""
    if found is None:
        return [("immortal", "immortal targets", NOT_MEASURED, None)]
    return [*(("immortal", label, "%.2f" % t["value"], t["met"])
              for label, t in found["targets"].items()),
            *(("immortal", "CPython %s" % minor, "%s: %s" % (NOT_MEASURED, why), None)
              for minor, why in found["skipped"].items())]


# -- sections ---------------------------------------------------------------------------

def header(results):
    meta = results["meta"]
    rows = [("date (UTC)", meta["date"]), ("command", "`%s`" % meta["command"]),
            ("mode", meta["mode"]), ("run time", "%.0f s" % meta["seconds"]),
            ("machine", "%s CPUs (%s), %.1f GiB RAM, Linux %s" % (
                meta["cpus"], meta["cpu_model"], meta["ram_gib"], meta["kernel"])),
            ("load average", "%.2f at start, %.2f at end (other work shares the machine)"
             % (meta["loadavg_start"], meta["loadavg_end"])),
            ("Python", meta["python"]), ("gunicorn", meta["gunicorn"]),
            ("gunicorn_smartspawn", revision(meta)),
            ("load generator", meta["load_generator"]),
            ("other packages", ", ".join("%s %s" % kv for kv in meta["packages"].items()))]
    return ["# Benchmarks", "",
            "<!-- Generated by `python -m bench`; do not edit by hand: rerun it with `--out` "
            "naming this folder. -->", "",
            "Figures of one run of `%s` on this code; the methods are described in "
            "`bench/README.md`. Ratios are to plain gunicorn unless said otherwise."
            % meta["command"], "", "| | |", "|---|---|",
            *("| %s | %s |" % row for row in rows), ""]


def revision(meta):
    """Version, git commit and source digest; says so if the tree changed during the run."""
    text = "%s, git %s, source sha256 %s" % (meta["smartspawn"], meta["git"], meta["source"])
    if meta["source_at_end"] != meta["source"]:
        return text + " (**the code changed during the run**: git %s, source %s at the end)" % (
            meta["git_at_end"], meta["source_at_end"])
    if meta["git_at_end"] != meta["git"]:
        return text + " (the same code was committed as %s during the run)" % meta["git_at_end"]
    return text


def summary(results):
    lines = ["## Targets", "", "| step | target | measured | |", "|---|---|---:|---|"]
    lines += ["| %s | %s | %s | %s |" % (step, target, measured, verdict(met))
              for step, target, measured, met in targets(results)]
    return lines + [""]


def spawn_section(results):
    lines = ["## 1. Worker spawn-to-first-response latency", "",
             "SIGTTIN while every worker is busy, then a request only the new worker can "
             "answer; app `bench/apps/heavy_import.py` (~1 s, ~140 MB to import). *direct* "
             "is gunicorn's own spawn (the worker imports the app); *smart* forks from the "
             "preloader; *template* forks from a warmed worker after a refork.", ""]
    spawn, template = data(results, "spawn"), data(results, "template")
    notes = [n for n in (step_note(results, "spawn"), step_note(results, "template")) if n]
    if spawn is None:
        return lines + notes + [""] + heap10_section(results)
    methods = {name: spawn["methods"][name] for name in ("direct", "smart")}
    if template is not None:
        methods["template"] = template["template"]
    direct = methods["direct"]["median_ms"]
    lines += ["| method | median ms | min ms | max ms | n | × faster than direct "
              "(plain gunicorn) | new worker's USS MB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in methods.items():
        lines.append("| %s | %.2f | %.2f | %.2f | %d | %.0f× | %s |" % (
            name, s["median_ms"], s["min_ms"], s["max_ms"], s["n"], direct / s["median_ms"],
            fmt(s["worker_uss_mb_median"])))
    lines += ["", "Targets: smart ≥ 50× faster than direct; smart and template ≤ %g ms "
              "(medians)." % SPAWN_MS, ""]
    drawn = plots.spawn(methods, results["out"] / "spawn_latency.png")
    return (lines + notes + image(drawn, "spawn latency", "spawn_latency.png")
            + heap10_section(results))


def heap10_section(results):
    lines = ["### On a heap ten times larger", "",
             "The same rounds on one server whose app builds ten times the records "
             "(1 700 000): smart spawns first, then a refork and template spawns "
             "(`python -m bench.template_spawn --smart --records 1700000`; no direct "
             "rounds: each would import for ~10 s).", ""]
    heap10 = data(results, "heap10")
    if heap10 is None:
        return lines + [step_note(results, "heap10"), ""]
    lines += ["| method | median ms | min ms | max ms | n | new worker's USS MB |",
              "|---|---:|---:|---:|---:|---:|"]
    for kind in ("smart", "template"):
        s = heap10[kind]
        lines.append("| %s | %.2f | %.2f | %.2f | %d | %s |" % (
            kind, s["median_ms"], s["min_ms"], s["max_ms"], s["n"],
            fmt(s["worker_uss_mb_median"])))
    return lines + ["", "Target: ≤ %g ms (medians)." % SPAWN_MS_HEAP10, ""]


def memory_section(results):
    lines = ["## 2. Total PSS after the same traffic", "",
             "Sum of PSS over the master and every process of its tree; 4 workers, each "
             "filling a ~100 MB lazy cache on first use (`bench/apps/lazy_cache.py`); "
             "*warm*: every worker answered; *after refork*: `kill -URG`, every new worker "
             "answered; *after +N*: N more requests per worker, each reading random records.",
             ""]
    memory = data(results, "memory")
    if memory is None:
        return lines + [step_note(results, "memory"), ""]
    fig, more = memory["figures"], memory["args"]["more"]
    plain = fig["plain"]["warm"]["total_pss"]
    lines += ["| configuration | command | total PSS MiB warm | after refork | after +%d "
              "| × plain (last) |" % more, "|---|---|---:|---:|---:|---:|"]
    for name, phases in fig.items():
        last = next(phases[p]["total_pss"] for p in ("more", "refork", "warm")
                    if phases[p]["total_pss"] is not None)
        lines.append("| %s | `%s` | %s | %s | %s | %.2f× |" % (
            name, MEMORY_COMMANDS.get(name, ""), *(fmt(phases[p]["total_pss"])
                                                   for p in ("warm", "refork", "more")),
            last / plain))
    lines += ["", "| ratio of total PSS, smart+refork | value | target |",
              "|---|---:|---|"]
    goals = {"after refork / before refork": "≤ 0.50", "after refork / preload": "≤ 0.50"}
    lines += ["| %s | %.2f | %s |" % (name, value, goals.get(name, ""))
              for name, value in memory["ratios"].items()]
    drawn = plots.memory(fig, results["out"] / "pss.png")
    return lines + [""] + image(drawn, "total PSS", "pss.png")


def latency_section(results):
    lines = ["## 3. Latency and throughput", ""]
    load = data(results, "load")
    if load is None:
        lines += [step_note(results, "load"), ""]
    else:
        lines += ["%s, %d connections against `--workers %d`, %d rounds of %d s per server, "
                  "alternating; medians; ratios are medians of per-round ratios to plain (each "
                  "pair ran back to back), so they can differ from the ratio of the medians. "
                  % (load["client"], load["connections"], load["workers"], load["rounds"],
                     load["seconds"]) + client_note(load["client"]), ""]
        lines += latency_table(load["endpoints"], "plain")
        lines += cpu_table({label: e["cpu"] for label, e in load["endpoints"].items()
                            if "cpu" in e})
        drawn = plots.latency(load["endpoints"], results["out"] / "latency.png")
        lines += image(drawn, "latency and throughput", "latency.png")
    return lines + oob_section(results) + oobcoord_section(results)


def client_note(client):
    if client == "wrk":
        return ("wrk corrects its percentiles for coordinated omission (a stalled response "
                "adds synthetic samples), so its tails read higher than per-request ones.")
    return "The Python client records every request's own latency."


def latency_table(endpoints, base):
    lines = ["| endpoint | server | req/s | p50 ms | p99 ms | p99.9 ms | failed | × req/s "
             "| × req/s, per round | × p99 | × p99.9 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, e in endpoints.items():
        for name, m in e["medians"].items():
            r = e["ratios_to_plain"].get(name)
            ratios = ("%.3f" % r["rps"], rps_range(e, name), "%.2f" % r["p99"],
                      "%.2f" % r["p999"]) if r else ("(%s)" % base,) * 4
            lines.append("| `%s` | %s | %.0f | %.2f | %.2f | %.2f | %d | %s | %s | %s | %s |"
                         % (label, name, m["rps"], m["p50"], m["p99"], m["p999"], m["errors"],
                            *ratios))
    return lines + ["", "*× req/s, per round*: the lowest and highest ratio of single rounds "
                    "(run back to back): the spread the noise of the machine allows.", ""]


def cpu_table(measured):
    """CPU per request ({endpoint: bench/cpucost.py's measure()}), the throughput targets'
    figure."""
    if not measured:
        return []
    first = next(iter(measured.values()))
    lines = ["CPU per request (`bench/cpucost.py`): the servers loaded at the same time, "
             "%s; %d rounds of %d s; CPU (user + system) of every process of the server's "
             "session (master, workers, smartspawn's preloader and standby) over the "
             "window, divided by the requests served. *Requests per CPU-second × first*: "
             "per round, the first server's CPU per request divided by this one's; the "
             "hello-world throughput targets are judged on its median, where rounds of "
             "req/s taken in turns spread too widely to tell 0.98 from 1." % (
                 "pinned to one half of the CPUs and their load generators to the other"
                 if first["pinned"] else "not pinned (one CPU)", first["rounds"],
                 first["seconds"]), "",
             "| endpoint | server | CPU µs per request | requests per CPU-second × first, "
             "median (lowest–highest) | spread |", "|---|---|---:|---:|---:|"]
    for label, cpu in measured.items():
        for name, runs in cpu["runs"].items():
            r = cpu["ratios"].get(name)
            lines.append("| `%s` | %s | %.1f | %s | %s |" % (
                label, name, statistics.median(x["cpu_us"] for x in runs),
                "%.3f (%.3f–%.3f)" % (r["median"], r["min"], r["max"]) if r else "(first)",
                "±%.1f %%" % (100 * r["spread"]) if r else ""))
    return lines + ["", "Where smartspawn's extra CPU per request goes: "
                    "[request-path.md](request-path.md).", ""]


def rps_range(endpoint, name):
    """"min–max" of the per-round req/s ratios of `name` to the first server, if known."""
    runs = endpoint.get("runs")
    if not runs:
        return "–"
    base = runs[next(iter(runs))]
    ratios = [b["rps"] / a["rps"] for a, b in zip(base, runs[name], strict=True)]
    return "%.2f–%.2f" % (min(ratios), max(ratios))


def oob_section(results):
    lines = ["### With `oob_gc` (bench/oob_latency.py)", ""]
    oob = data(results, "oob")
    if oob is None:
        return lines + [step_note(results, "oob"), ""]
    endpoints = oob_endpoints(oob)
    lines += ["%s client, `--workers %s`, %s rounds of %s s, alternating; A = plain gunicorn "
              "(sync), B = smartspawn + `oob_gc`. " % (oob.get("client"), oob.get("workers"),
                                                       oob.get("rounds"), oob.get("seconds"))
              + client_note(oob.get("client")), ""]
    if "floor" in oob:
        lines += ["*F floor* (`/garbage` only): plain gunicorn serving the same requests "
                  "with no cycle in them (`OOB_BENCH_ACYCLIC=1`), its worker freeing each "
                  "request's rows by reference counting once the connection is closed, "
                  "where smartspawn collects them, and the collector off: the same freeing "
                  "at the same moment without the collector's own work, the least p99 any "
                  "out-of-band collection could give here. Its p99: %.2f× A's. Where "
                  "`/garbage`'s p99 goes: [oob-profile.md](oob-profile.md)."
                  % oob["floor"]["p99"], ""]
    if "gc_floor" in oob:
        lines += ["*G floor* (`/garbage` only): plain gunicorn serving the same requests as "
                  "A and B, its worker running `gc.collect(0)` once the connection is "
                  "closed, where smartspawn collects, with the automatic collector off: the "
                  "least collecting that frees the same garbage, with none of smartspawn's "
                  "machinery. Its p99: %.2f× A's." % oob["gc_floor"]["p99"], ""]
    lines += latency_table(endpoints, "A")
    lines += cpu_table(oob.get("cpu", {}))
    drawn = plots.latency(endpoints, results["out"] / "oob_latency.png")
    return lines + image(drawn, "oob latency", "oob_latency.png")


def oobcoord_section(results):
    lines = ["### Out-of-band work coordinated by the master (bench/oob_coordination.py)", ""]
    found = data(results, "oobcoord")
    if found is None:
        return lines + [step_note(results, "oobcoord"), ""]
    a, coord, work = found["args"], found["coordination"], found["spawn_first"]
    lines += ["`-k smartspawn.Worker --workers %d`, `oob_gc = True`, `GET /garbage` of "
              "`bench/apps/oob_app.py`, %d Python client processes back to back; %d rounds "
              "of %d s, alternating. *most at once*: the master's `oob_most_at_once` (its "
              "maximum over the run) against the server's `oob_concurrency`. Ratios: "
              "%s, per round: median (lowest–highest)." % (
                  a["workers"], a["connections"], a["rounds"], a["seconds"],
                  coord["ratio_of"]), "",
              "| arm | req/s | p50 ms | p99 ms | p99.9 ms | failed | grants | most at once |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, arm in coord["arms"].items():
        lines.append("| %s | %.0f | %.2f | %.2f | %.2f | %d | %d | %d of %d |" % (
            name, arm["rps"], arm["p50"], arm["p99"], arm["p999"], arm["errors"],
            arm["grants"], arm["most_at_once"], arm["oob_concurrency"]))
    lines.append("| ratio A/B | %s |  |  |  |" % " | ".join(
        "%.2f (%.2f–%.2f)" % (r["median"], r["min"], r["max"])
        for r in coord["ratios"].values()))
    lines += ["", "`--workers 1`, a response with the work header and %.1f s of work "
              "(smartspawn: `on_oob_work`; plain gunicorn has no out-of-band work: a "
              "`post_request` hook sleeping as long is its closest analogue); a paced probe "
              "of %d clients, %.0f req/s in all; the requests due during the work, over %d "
              "rounds." % (a["work_seconds"], a["probes"], a["rate"], a["rounds"]), "",
              "| server | requests | median ms | max ms | failed | asked → work ms | "
              "spawned a worker first |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, arm in work["arms"].items():
        lines.append("| %s | %d | %.2f | %.2f | %d | %.0f | %d of %d |" % (
            name, arm["requests"], arm["p50"], arm["max"], arm["failed"],
            arm["asked_to_work_ms"], arm["spawned_first"], a["rounds"]))
    return lines + ["", "Targets: most at once ≤ `oob_concurrency`; requests during the "
                    "work < 50 ms.", ""]


def oob_endpoints(oob):
    """oob_latency.py's {"runs": {path: {label: [runs]}}, "ratios"} as load.py's shape."""
    out = {}
    for path, by_server in oob["runs"].items():
        medians = {label: {k: statistics.median(r[k] for r in rs)
                           for k in ("rps", "p50", "p99", "p999")} |
                   {"errors": sum(r["errors"] for r in rs)} for label, rs in by_server.items()}
        out[path] = {"medians": medians, "runs": by_server,
                     "ratios_to_plain": oob.get("ratios", {}).get(path, {})}
    return out


def events_section(results):
    lines = ["## 4. Refork and HUP under load", ""]
    events = data(results, "events")
    if events is None:
        return lines + [step_note(results, "events"), ""]
    lines += ["`gunicorn -k smartspawn.Worker -w %d` (fork_worker on) serving `%s` of the "
              "Flask app to %d Python client processes (every request timed); %d event(s) of "
              "each kind; *steady*: the %.0f s before the event, *during*: requests that "
              "started between the signal and the end of the event (refork: `done` in the log; "
              "HUP: no old worker left). Medians over events; failed requests summed over each "
              "whole load run." % (events["workers"], events["path"], events["connections"],
                                   events["rounds"], events["steady_seconds"]), "",
              "| event | failed requests | requests | event s | p99 steady ms | p99 during ms "
              "| × steady | max during ms | req/s steady | req/s during | server ERROR lines |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, s in events["summary"].items():
        lines.append("| %s | %d | %d | %.2f | %.2f | %.2f | %.2f | %.1f | %.0f | %.0f | %d |" % (
            kind, s["failed"], s["requests"], s["seconds"], s["steady_p99"], s["during_p99"],
            s["p99_ratio"], s["during_max"], s["steady_rps"], s["during_rps"],
            s["log_errors"]))
    drawn = plots.events(events["events"], results["out"] / "events.png")
    return lines + [
        "", "*floor*: no event of the server's, but the least work any such event does, "
        "under the same load, with none of smartspawn's: *refork floor*, "
        "`bench/fork_floor.py`, a process outside the server that imported the same app, "
        "forks %d children one at a time, each answering one request and exiting (a "
        "refork's forks, the new workers' copy-on-write faults, the old workers' exits); "
        "*hup floor*, a new such process imports the app, then does the same (a reload "
        "imports the new code). Its window lasts as long as the event's in the same "
        "round. The floor is a reference for what this machine allows, not a strict "
        "bound: smartspawn forks its standbys ahead of need, some of that work before "
        "the event's window. *double-fork floor*: the same, done the way smartspawn forks "
        "(`--double`): a stand-in more (%d children), each through a middle process that "
        "forks it and exits, so that the master stays every worker's parent: what a refork "
        "or a HUP costs here with smartspawn's design and none of its other work."
        % (events["workers"], events["workers"] + 1), "",
        "Targets: 0 failed requests; p99 during ≤ 1.5× steady (issue 27). Where the time "
        "goes: [refork-profile.md](refork-profile.md).", ""] + image(
            drawn, "events", "events.png")


def lifecycle_section(results):
    lines = ["## 5. Memory over a long run", "",
             "Total PSS of a 4-worker server over the same long load of "
             "`bench/apps/churn_app.py` (a catalogue built at import; each request fills a "
             "bounded memo and reads shared objects, un-sharing their pages): no refork, "
             "`fork_worker = 1000`, a hand-tuned `fork_worker` list, `refork_on_memory` (its "
             "sampling and minimum intervals shortened to the run's length), and the ideal: "
             "plain `gunicorn -w 1` with one worker that built the whole memo. Medians over "
             "rounds; *mean*: averaged over the run's requests.", ""]
    lifecycle = data(results, "lifecycle")
    if lifecycle is None:
        return lines + [step_note(results, "lifecycle"), ""]
    final, mean = lifecycle["final_total_pss"], lifecycle["mean_total_pss"]
    lines += ["| configuration | final total PSS MiB | × ideal | mean over the run | reforks "
              "per run | failed |", "|---|---:|---:|---:|---|---:|"]
    for name, runs in lifecycle["runs"].items():
        lines.append("| %s | %.1f | %.2f | %s | %s | %s |" % (
            name, final[name], final[name] / final["e ideal"], fmt(mean.get(name)),
            ", ".join(str(len(r["reforks"])) for r in runs) if name in mean else "–",
            sum(r["failed"] for r in runs) if name in mean else "–"))
    drawn = plots.memory_lifecycle(lifecycle["runs"], results["out"] / "memory_lifecycle.png")
    return lines + [""] + image(drawn, "memory over a long run", "memory_lifecycle.png")


def recycle_section(results):
    lines = ["## 6. Latency during `max_requests` recycling", ""]
    recycle = data(results, "recycle")
    if recycle is None:
        return lines + [step_note(results, "recycle"), ""]
    a = recycle["args"]
    lines += ["`--workers %d` on `GET /` of `bench/apps/heavy_import.py` (%.1f s import); a "
              "steady server (`max_requests = 0`) and a recycling one (`max_requests = %d`, "
              "jitter %d) per kind; two loads of Python clients: *saturated* (%d clients back "
              "to back) and *paced* (%d clients, %s; open loop); %d rounds of %d s "
              "windows, alternating; medians. *During recycles*: the requests in "
              "flight while a worker was being replaced (from the first to the last of the "
              "replacement's fork and readiness and the old worker's exit, from gunicorn's "
              "hooks)." % (a["workers"], a["import_seconds"], a["max_requests"], a["jitter"],
                           a["workers"], 2 * a["workers"], pace_text(recycle["pace"]),
                           a["rounds"], a["seconds"]), "",
              "| load | server | steady p99 ms | recycling p99 ms | × steady | p99 during "
              "recycles ms | × steady | requests during recycles | max recycling ms | req/s "
              "steady | req/s recycling | recycles per window | failed |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in recycle["summary"].items():
        lines.append("| %s | %.2f | %.2f | %.2f | %s | %s | %.0f %% | %.0f | %.0f | %.0f | %.0f "
                     "| %d |" % (" | ".join(name.split()), s["steady_p99"], s["recycling_p99"],
                                 s["p99_ratio"], fmt(s["during_p99"], "%.2f"),
                                 fmt(s["during_ratio"], "%.2f"), 100 * s["during_share"],
                                 s["recycling_max"], s["steady_rps"], s["recycling_rps"],
                                 s["recycles"], s["failed"]))
    floors = [(load, recycle["summary"].get("%s floor" % load)) for load in ("saturated", "paced")]
    return lines + [
        "", "*floor*: no server's recycle, but the least work any recycle by fork() does, "
        "under the same load on the smartspawn steady server: `bench/fork_floor.py`, a "
        "process outside the servers that imported the same app, forks a child that "
        "answers one request and exits (a recycle's fork, the new worker's copy-on-write "
        "faults, the old worker's exit), as often as smartspawn recycled in the round, each "
        "time for as long as its median recycle lasted. Its p99 during those, against the "
        "smartspawn steady p99, is a reference for what this machine allows%s. It is not a "
        "strict bound: smartspawn forks the standby that replaces a worker ahead of need, "
        "before the recycle begins, and can read below it." % "".join(
            "; %s: %s×" % (load, fmt(f["during_ratio"], "%.2f")) for load, f in floors
            if f is not None),
        "", "Target: smartspawn's p99 during recycles ≤ 1.2× its steady p99.", ""]


def immortal_section(results):
    lines = ["## 7. `gc_freeze = \"immortal\"`: the shared heap after every worker read it",
             "", "`bench/immortal.py --measures read` on each CPython: app "
             "`bench/apps/lazy_cache.py`, 4 workers build its ~100 MB cache, a refork, then "
             "each new worker (the cache inherited from the template) reads all of it. Total "
             "PSS of the tree, `gc_freeze = True` beside `\"immortal\"`, against one warmed "
             "process (plain `gunicorn -w 1` whose worker built and read it); the pass's "
             "seconds per million objects walked, all the passes of the runs together (from "
             "the master's log). Medians of rounds.", ""]
    found = data(results, "immortal")
    if found is None:
        return lines + [step_note(results, "immortal"), ""]
    lines += ["| CPython | one warmed process MiB | `True` MiB | `\"immortal\"` MiB | × one "
              "warmed process | pass s per million objects walked | rounds |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for version, run in found["pythons"].items():
        pss = {value: statistics.median(r["total_pss"] for r in runs)
               for value, runs in run["runs"]["read"].items()}
        per_million = next((t["value"] for label, t in run["targets"].items()
                            if label.startswith("pass:")), None)
        lines.append("| %s | %.1f | %.1f | %.1f | %.2f | %s | %d |" % (
            version, pss["reference"], pss["True"], pss["immortal"],
            pss["immortal"] / pss["reference"], fmt(per_million, "%.2f"),
            run["args"]["rounds"]))
    lines += ["| %s | skipped: %s | | | | | |" % item for item in found["skipped"].items()]
    return lines + ["", "Targets: ≤ 1.10× one warmed process; the pass ≤ 0.3 s per million "
                    "objects walked. Where the memory goes, and the pass's floor in Python: "
                    "[immortal-profile.md](immortal-profile.md).", ""]


def steps_section(results):
    lines = ["## Steps of this run", "", "| step | command | status | s |", "|---|---|---|---:|"]
    for name, entry in results["steps"].items():
        lines.append("| %s | `%s` | %s | %s |" % (
            name, " ".join(entry.get("command") or ["–"]), entry["status"],
            fmt(entry.get("seconds"), "%.0f")))
    return lines + ["", "Raw results: [results.json](results.json).", ""]


def write(results):
    """Write index.md and the PNGs into results["out"]."""
    sections = (header, summary, spawn_section, memory_section, latency_section,
                events_section, lifecycle_section, recycle_section, immortal_section,
                steps_section)
    lines = [line for section in sections for line in section(results)]
    (results["out"] / "index.md").write_text("\n".join(lines).rstrip() + "\n")
