"""The PNG figures of docs/benchmarks/ (matplotlib, no display needed).

Without matplotlib the benchmarks still run: each figure function then draws nothing and
returns False (True when it wrote its file), and MISSING is the line to print once.
"""
import functools

try:
    import matplotlib
except ImportError:
    matplotlib = None
else:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

AVAILABLE = matplotlib is not None
MISSING = ("no plots: matplotlib is not installed (`pip install --group bench` in the "
           "project's root installs what the benchmarks use; pip >= 25.1)")

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def figure(draw):
    """A figure function that draws only with matplotlib; -> whether it wrote its file."""
    @functools.wraps(draw)
    def maybe(*args, **kwargs):
        if not AVAILABLE:
            return False
        draw(*args, **kwargs)
        return True
    return maybe


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def label_bars(ax, bars, spec):
    for bar in bars:
        height = bar.get_height()
        ax.annotate(spec % height, (bar.get_x() + bar.get_width() / 2, height),
                    ha="center", va="bottom", fontsize=8)


@figure
def spawn(methods, path):
    """Median spawn-to-first-response per method, min-max whiskers, the 5 ms target."""
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(methods)
    medians = [methods[n]["median_ms"] for n in names]
    whiskers = [[methods[n]["median_ms"] - methods[n]["min_ms"] for n in names],
                [methods[n]["max_ms"] - methods[n]["median_ms"] for n in names]]
    ticks = ["%s\n%.1f ms" % (n, m) for n, m in zip(names, medians, strict=True)]
    ax.bar(ticks, medians, yerr=whiskers, capsize=4, color=COLORS[:len(names)])
    ax.axhline(5, color="black", linestyle="--", linewidth=1, label="target: smart ≤ 5 ms")
    ax.set_yscale("log")
    ax.set_ylabel("SIGTTIN → first response, ms (log)")
    ax.set_title("Worker spawn-to-first-response latency (median, min–max)")
    ax.legend()
    save(fig, path)


@figure
def memory(figures, path):
    """Total PSS per configuration and phase; the target line at 0.5 x --preload."""
    phases = [("warm", "warm"), ("refork", "after refork"), ("more", "after +N requests")]
    names = list(figures)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.27
    for i, (phase, label) in enumerate(phases):
        xs = [x + (i - 1) * width for x, n in enumerate(names)
              if figures[n][phase]["total_pss"] is not None]
        ys = [figures[n][phase]["total_pss"] for n in names
              if figures[n][phase]["total_pss"] is not None]
        label_bars(ax, ax.bar(xs, ys, width, label=label, color=COLORS[i]), "%.0f")
    target = 0.5 * figures["preload"]["warm"]["total_pss"]
    ax.axhline(target, color="black", linestyle="--", linewidth=1,
               label="target after refork: ≤ 0.5 × --preload")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("total PSS of the server, MiB")
    ax.set_title("Memory after the same traffic (4 workers, ~100 MB lazy cache each)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4)
    save(fig, path)


@figure
def latency(endpoints, path):
    """Per endpoint: p50/p99/p99.9 per server (log scale), and requests/s."""
    fig, axes = plt.subplots(2, len(endpoints), figsize=(4.2 * len(endpoints), 7),
                             squeeze=False)
    for column, (label, e) in enumerate(endpoints.items()):
        servers = list(e["medians"])
        top, bottom = axes[0][column], axes[1][column]
        width = 0.8 / len(servers)
        for i, name in enumerate(servers):
            m = e["medians"][name]
            xs = [x + (i - (len(servers) - 1) / 2) * width for x in range(3)]
            top.bar(xs, [m["p50"], m["p99"], m["p999"]], width, label=name, color=COLORS[i])
        top.set_xticks(range(3), ["p50", "p99", "p99.9"])
        top.set_yscale("log")
        top.set_title(label)
        top.set_ylabel("latency, ms (log)")
        top.legend(fontsize=7)
        bars = bottom.bar(servers, [e["medians"][n]["rps"] for n in servers],
                          color=COLORS[:len(servers)])
        label_bars(bottom, bars, "%.0f")
        bottom.set_ylabel("requests/s")
        bottom.tick_params(axis="x", labelsize=7)
    save(fig, path)


@figure
def events(runs, path):
    """The first refork and the first HUP: latency per 100 ms around the event."""
    firsts = [next(e for e in runs if e["event"] == kind) for kind in ("refork", "hup")]
    fig, axes = plt.subplots(1, len(firsts), figsize=(11, 4), squeeze=False)
    for ax, event in zip(axes[0], firsts, strict=True):
        rows = event["timeline"]
        ts = [r[0] for r in rows]
        ax.plot(ts, [r[2] for r in rows], label="median per 100 ms", color=COLORS[0])
        ax.plot(ts, [r[3] for r in rows], label="max per 100 ms", color=COLORS[1])
        failed = [r for r in rows if r[4]]
        if failed:
            ax.scatter([r[0] for r in failed], [r[3] for r in failed], color="red",
                       marker="x", label="bins with failed requests")
        ax.axvspan(0, max(event["seconds"], 0.02), color="grey", alpha=0.3,
                   label="event (%.2f s)" % event["seconds"])
        ax.set_yscale("log")
        ax.set_xlabel("seconds from the signal")
        ax.set_ylabel("latency, ms (log)")
        ax.set_title("%s under load: %d failed of %d" % (
            "refork (kill -URG)" if event["event"] == "refork" else "kill -HUP",
            event["failed"], event["requests"]))
        ax.legend(fontsize=8)
    save(fig, path)


@figure
def memory_lifecycle(runs, path):
    """Total PSS against requests served, one line per run (colour: configuration); the
    reforks as dots; the ideal (one warmed process + master) as a dashed line."""
    fig, ax = plt.subplots(figsize=(9, 5))
    for color, (name, rs) in zip(COLORS, runs.items(), strict=False):
        if "points" not in rs[0]:
            ax.axhline(rs[0]["final"]["total_pss"], color=color, linestyle="--",
                       linewidth=1, label=name)
            continue
        for n, run in enumerate(rs):
            xs = [p["requests"] for p in run["points"]]
            ax.plot(xs, [p["total_pss"] for p in run["points"]], color=color,
                    alpha=1 if n == 0 else 0.45, linewidth=1.4 if n == 0 else 0.9,
                    label=name if n == 0 else None)
            reforks = [p for p in run["points"] if p["reforks"]]
            ax.scatter([p["requests"] for p in reforks], [p["total_pss"] for p in reforks],
                       color=color, s=18, zorder=3)
    ax.set_xlabel("requests served")
    ax.set_ylabel("total PSS of the server, MiB")
    ax.set_title("Memory over a long run (dots: a refork started in the chunk before)")
    ax.legend(fontsize=8)
    save(fig, path)


@figure
def eventloop(pairs, path, pss_path=None):
    """bench/eventloop.py: per pair, the ratio of each measure to the plain worker class
    (median of per-round ratios, whiskers: the lowest and highest single round) against
    its target; and (pss_path) the PSS by role of both servers after the refork / the
    same warm-up (round 1)."""
    names = list(pairs)

    def memory_ratio(key):
        def value(r):
            per_round = [key(x["smart"]["after"]) / key(x["plain"]["after"])
                         for x in r["rounds"]]
            return r["ratios"]["total" if key is total else "workers"], per_round
        return value

    def total(measure):
        return measure["total_pss"]

    def workers(measure):
        return measure["pss_by_role"].get("worker", 0.0)

    def load_ratio(name):
        return lambda r: (r["ratios"][name], r["ratio_ranges"][name])

    panels = [
        ("spawn", "spawn-to-first-response:\nplain ÷ smartspawn (× faster, log)",
         [("", lambda r: (r["ratio"], r["ratio_range"]))], 50, "target ≥ 50×", True),
        ("memory", "PSS after refork / same warm-up:\nsmartspawn ÷ plain",
         [("whole server", memory_ratio(total)), ("workers only", memory_ratio(workers))],
         None, None, False),
        ("gc", "/garbage, oob_gc vs none:\nsmartspawn ÷ plain",
         [("p99", load_ratio("p99")), ("req/s", load_ratio("rps"))], 0.7,
         "p99 target ≤ 0.7×", False),
        ("hello", "hello-world req/s:\nsmartspawn ÷ plain",
         [("", load_ratio("rps"))], 0.98, "target ≥ 0.98×", False),
    ]
    panels = [p for p in panels if any(p[0] in pairs[n] for n in names)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.6), squeeze=False)
    for ax, (measure, title, series, goal, goal_label, log) in zip(axes[0], panels,
                                                                   strict=True):
        width = 0.8 / len(series)
        shown = [n for n in names if measure in pairs[n]]
        for i, (label, value) in enumerate(series):
            xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(shown))]
            values = [value(pairs[n][measure]) for n in shown]
            ys = [v[0] for v in values]
            whiskers = [[y - min(v[1]) for y, v in zip(ys, values, strict=True)],
                        [max(v[1]) - y for y, v in zip(ys, values, strict=True)]]
            ax.bar(xs, ys, width, yerr=whiskers, capsize=3, label=label or None,
                   color=COLORS[i])
            for x, y in zip(xs, ys, strict=True):  # inside the bar: clear of the whiskers
                ax.annotate("%.0f×" % y if log else "%.2f" % y, (x, y ** 0.5 if log else y / 2),
                            ha="center", va="center", fontsize=8, color="white",
                            fontweight="bold")
        if measure == "memory":  # 1.3 x ideal, in ratio to each pair's plain server
            for x, n in enumerate(shown):
                ax.hlines(1.3 * pairs[n]["memory"]["ratios"]["ideal_to_plain"], x - 0.45,
                          x + 0.45, color="black", linestyle="--", linewidth=1,
                          label="target: whole ≤ 1.3 × ideal" if x == 0 else None)
        if goal is not None:
            ax.axhline(goal, color="black", linestyle="--", linewidth=1, label=goal_label)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(1, 1000)
        else:
            ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(shown)), shown)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    save(fig, path)
    if pss_path is None:
        return
    roles = ["master", "preloader", "standby", "template", "worker"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ticks, x = [], 0
    for n in names:
        if "memory" not in pairs[n]:
            continue
        first = pairs[n]["memory"]["rounds"][0]
        for side in ("smart", "plain"):
            bottom = 0.0
            by_role = first[side]["after"]["pss_by_role"]
            for color, role in zip(COLORS, roles, strict=False):
                value = by_role.get(role, 0.0)
                ax.bar(x, value, 0.7, bottom=bottom, color=color,
                       label=role if not ticks else None)
                bottom += value
            ax.annotate("%.0f" % bottom, (x, bottom), ha="center", va="bottom", fontsize=8)
            ticks.append(("%s\n%s" % (n, "smartspawn" if side == "smart" else "plain"), x))
            x += 1
        x += 0.5
    ax.set_xticks([t[1] for t in ticks], [t[0] for t in ticks], fontsize=8)
    ax.set_ylabel("PSS, MiB (round 1)")
    ax.set_title("PSS by role after the refork (smartspawn) / the same warm-up (plain)",
                 fontsize=10)
    ax.legend(fontsize=8)
    save(fig, pss_path)
