"""bench's own decisions: which steps run, and the paced load's rate."""
import argparse
import os
import sys
import threading
import time
import types
from pathlib import Path

import pytest

# bench/ is beside tests/, not installed. Appended: an installed gunicorn_smartspawn
# still comes first.
sys.path.append(str(Path(__file__).resolve().parents[2]))

from bench import cpucost, plots, report, server  # noqa: E402
from bench.__main__ import STEPS, step_list, steps  # noqa: E402
from bench.recycle_latency import KINDS, pace_of, pace_text  # noqa: E402


def test_steps_are_checked_by_name():
    assert step_list("spawn,recycle") == ["spawn", "recycle"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown step"):
        step_list("spawn,nope")
    with pytest.raises(argparse.ArgumentTypeError, match="none given"):
        step_list(",")
    assert "lifecycle" in STEPS
    assert step_list("oobcoord") == ["oobcoord"]


def test_every_step_has_a_command_in_the_order_of_steps(tmp_path):
    """A name in STEPS that steps() does not know would never run (nor be said skipped)."""
    assert [name for name, _, _ in steps(False, tmp_path)] == list(STEPS)
    oobcoord = dict((name, argv) for name, argv, _ in steps(True, tmp_path))["oobcoord"]
    assert oobcoord[1:4] == ["-m", "bench.oob_coordination", "--quick"]


def test_the_paced_load_is_a_share_of_the_lower_saturated_rate():
    """Paced above the machine's capacity, p99 measures a queue: the pace is a share of
    what the slower steady server did saturated, in the same run."""
    runs = {("saturated", kind, "steady"): [{"rps": rps}]
            for kind, rps in zip(KINDS, (1549.0, 1800.0), strict=True)}
    pace = pace_of(runs, types.SimpleNamespace(rate=None, pace=0.5))
    assert pace == {"rate": 774.5, "fraction": 0.5, "saturated_rps": 1549.0}
    assert pace_text(pace).startswith("774 req/s in all: 50 % of 1549")
    fixed = pace_of(runs, types.SimpleNamespace(rate=2000.0, pace=0.5))
    assert fixed["rate"] == 2000.0 and pace_text(fixed).endswith("(--rate)")


def test_a_figure_without_matplotlib_draws_nothing(monkeypatch):
    drawn = []
    figure = plots.figure(lambda path: drawn.append(path))
    monkeypatch.setattr(plots, "AVAILABLE", False)
    assert figure("x.png") is False and drawn == []
    monkeypatch.setattr(plots, "AVAILABLE", True)
    assert figure("x.png") is True and drawn == ["x.png"]


def test_cpu_per_request_and_the_ratio_to_the_first_server():
    """Requests per CPU-second relative to the first server, per round run together: a
    server that spends 10 % more CPU per request reads 1/1.1."""
    assert cpucost.cpu_per_request(1.0, 1.5, 2500) == pytest.approx(200.0)
    assert cpucost.cpu_per_request(1.0, 1.0, 0) == 0.0  # no request: no division by 0
    runs = {"plain": [{"cpu_us": 100.0}, {"cpu_us": 120.0}, {"cpu_us": 110.0}],
            "smartspawn": [{"cpu_us": 110.0}, {"cpu_us": 120.0}, {"cpu_us": 100.0}]}
    ratios = cpucost.efficiency_ratios(runs)
    assert list(ratios) == ["smartspawn"]
    r = ratios["smartspawn"]
    assert r["median"] == pytest.approx(1.0) and r["n"] == 3
    assert (r["min"], r["max"]) == (pytest.approx(100 / 110), pytest.approx(1.1))
    assert r["spread"] == pytest.approx(0.1)  # the round farthest from the median
    assert cpucost.text(r, "×") == "1.000× (0.909–1.100, ±10.0 %, 3 rounds)"


def test_the_clients_and_the_servers_get_different_cpus():
    assert cpucost.split_cpus({0, 1}) == ({0}, {1})
    assert cpucost.split_cpus({3, 0, 2, 1, 4}) == ({0, 1}, {2, 3, 4})
    assert cpucost.split_cpus({0}) is None


def test_a_process_cpu_counts_every_thread():
    """schedstat's first field (ns on CPU) of each thread: a second thread that spent
    50 ms of CPU counts."""
    burned, stop = threading.Event(), threading.Event()

    def burn():
        while time.thread_time() < 0.05:
            pass
        burned.set()
        stop.wait()

    thread = threading.Thread(target=burn)
    thread.start()
    try:
        assert burned.wait(10)
        pid = os.getpid()
        with open("/proc/%d/task/%d/schedstat" % (pid, pid)) as f:
            main_thread = int(f.read().split()[0])
        assert server.task_ns(pid) - main_thread >= 0.05e9
    finally:
        stop.set()
        thread.join()
    assert server.task_ns(2**22 + 1) is None  # no such process


def test_the_refork_floor_forks_each_worker_in_turn_and_each_answers_a_request(tmp_path):
    from bench import fork_floor
    answered = tmp_path / "answered"

    def app(environ, start_response):
        with open(answered, "a") as out:
            out.write("%d %s\n" % (os.getpid(), environ["PATH_INFO"]))
        start_response("200 OK", [])
        return [b"ok"]

    fork_floor.replace_workers(app, "/product/{id}", 3, workers=2)
    lines = [line.split() for line in answered.read_text().splitlines()]
    assert len({pid for pid, _ in lines}) == 2 and str(os.getpid()) not in dict(lines)
    assert {path for _, path in lines} <= {"/product/1", "/product/2", "/product/3"}


def test_the_double_fork_floor_forks_a_stand_in_more_through_middles_and_reaps_them(
        tmp_path):
    from bench import fork_floor
    from gunicorn_smartspawn.shared import _linux
    answered = tmp_path / "answered"

    def app(environ, start_response):
        with open(answered, "a") as out:
            out.write("%d\n" % os.getpid())
        start_response("200 OK", [])
        return [b"ok"]

    floor = os.fork()
    if floor == 0:  # a subreaper of its own, as the floor process is: not pytest
        code = 1
        try:
            _linux.become_subreaper()
            fork_floor.replace_workers(app, "/", 1, workers=2, double=True)
            os.waitpid(-1, os.WNOHANG)  # every child reaped: ChildProcessError
        except ChildProcessError:
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(floor, 0)[1]) == 0
    pids = {int(line) for line in answered.read_text().splitlines()}
    assert len(pids) == 3 and floor not in pids


def test_the_event_targets_show_each_event_beside_its_floor():
    summary = {kind: {"failed": 0, "requests": 10, "p99_ratio": ratio} for kind, ratio in (
        ("refork", 4.0), ("hup", 1.4), ("refork floor", 2.1), ("hup floor", 1.2),
        ("refork double-fork floor", 3.0))}
    rows = {label: (measured, met) for _, label, measured, met in
            report.event_targets({"summary": summary})}
    assert rows["refork under load: p99 during ≤ 1.5× steady"] == (
        "4.00× (the floor: 2.10×, by double forks: 3.00×)", False)
    assert rows["HUP under load: p99 during ≤ 1.5× steady"] == (
        "1.40× (the floor: 1.20×)", True)


def test_the_recycle_floor_is_measured_against_the_smartspawn_steady_server():
    from bench import recycle_latency

    def window(p99, during=None):
        return {"p99": p99, "p999": p99, "max": p99, "rps": 1000, "errors": 0,
                "recycles": 3, "during_share": 0.1,
                "during": None if during is None else {"p99": during}}

    runs = {}
    for load in recycle_latency.LOADS:
        for kind, steady in (("plain", 4.0), ("smartspawn", 2.0)):
            runs["%s %s steady" % (load, kind)] = [window(steady)]
            runs["%s %s recycling" % (load, kind)] = [window(steady, during=steady * 3)]
        runs["%s floor recycling" % load] = [window(2.0, during=3.0)]
    result = {"runs": runs, "revision": "x", "pace": {"rate": 1, "fraction": None},
              "args": {"workers": 4, "import_seconds": 0.7, "max_requests": 1000,
                       "jitter": 200, "rounds": 1, "seconds": 8}}
    recycle_latency.summarize(result)
    assert result["summary"]["saturated floor"]["during_ratio"] == 1.5  # 3.0 / 2.0
    assert result["summary"]["paced smartspawn"]["during_ratio"] == 3.0


def test_the_oob_floors_serve_garbage_only_and_show_beside_the_p99_target():
    from bench import oob_latency
    servers = [types.SimpleNamespace(name=name) for name in
               ("A plain gunicorn", "B smartspawn oob_gc", oob_latency.FLOOR,
                oob_latency.GC_FLOOR)]
    assert [s.name for s in oob_latency.loaded(servers, "/garbage")] == [
        s.name for s in servers]
    assert [s.name for s in oob_latency.loaded(servers, "/hello")] == [
        "A plain gunicorn", "B smartspawn oob_gc"]
    oob = {"targets": {"/garbage p99 B/A <= 0.70": {"value": 0.8, "met": False}},
           "floor": {"p99": 0.65, "p999": 0.01}}
    rows = {label: measured for _, label, measured, _ in report.oob_targets(oob)}
    assert rows["oob_gc: p99 ≤ 0.7× plain gunicorn"] == "0.80× (the floor: 0.65×)"
    oob["gc_floor"] = {"p99": 0.7, "p999": 0.01}
    rows = {label: measured for _, label, measured, _ in report.oob_targets(oob)}
    assert rows["oob_gc: p99 ≤ 0.7× plain gunicorn"] == (
        "0.80× (the floor: 0.65×, with gc.collect(0): 0.70×)")


def import_oob_app(monkeypatch, acyclic):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench" / "apps"))
    monkeypatch.setenv("OOB_BENCH_RECORDS", "10")
    monkeypatch.setenv("OOB_BENCH_CYCLES", "50")
    monkeypatch.setenv("OOB_BENCH_ACYCLIC", acyclic)
    monkeypatch.delitem(sys.modules, "oob_app", raising=False)
    import oob_app
    return oob_app


def test_the_oob_app_leaves_cycles_or_rows_for_the_floor_to_free(monkeypatch):
    import gc
    import weakref
    cyclic = import_oob_app(monkeypatch, "0")
    gc.collect()
    cyclic.garbage()
    assert gc.collect() >= 2 * 50  # a row and its list at least, for each row
    acyclic = import_oob_app(monkeypatch, "1")
    gc.disable()
    try:
        acyclic.garbage()
        row = weakref.ref(acyclic.AFTER_RESPONSE[0]["rows"][0])
        assert row() is not None  # kept until the response is sent
        acyclic.AFTER_RESPONSE.clear()
        assert row() is None  # then freed by reference counting, with no collection
    finally:
        gc.enable()


def test_the_oob_floor_worker_frees_the_rows_after_the_connection_and_never_collects(
        monkeypatch):
    import gc

    from bench import oob_latency
    from gunicorn.workers.sync import SyncWorker
    oob_app = import_oob_app(monkeypatch, "1")
    closed = []
    monkeypatch.setattr(SyncWorker, "handle", lambda self, *args: closed.append(
        len(oob_app.AFTER_RESPONSE)))
    config = {}
    exec(oob_latency.NO_COLLECTOR, config)
    oob_app.garbage()
    config["worker_class"].handle(object.__new__(config["worker_class"]), None, None, None)
    assert closed == [1] and oob_app.AFTER_RESPONSE == []  # freed once gunicorn's ended
    try:
        config["post_worker_init"](None)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_recycle_window_waits_until_every_server_is_idle(monkeypatch):
    from bench import recycle_latency

    class FakeServer:
        def __init__(self, *readings):
            self.readings = iter(readings)

        def alive(self):
            return True

        def cpu_by_pid(self):
            return next(self.readings)

    monkeypatch.setattr(server.time, "sleep", lambda seconds: None)
    quiet = FakeServer(*[{1: 2.0}] * 4)
    # A worker (pid 11) exits as it frees its heap, its replacement (12) starts: the CPU
    # in the sum goes down, and yet the server is busy.
    recycling = FakeServer({10: 5.0, 11: 0.6}, {10: 5.0, 12: 0.1}, {10: 5.0, 12: 0.1},
                           {10: 5.0, 12: 0.1})
    recycle_latency.wait_idle([quiet, recycling], timeout=5)
    assert next(recycling.readings, "read twice") == "read twice"  # two polls, not one


def test_the_recycle_targets_show_each_load_beside_its_floor():
    label = "smartspawn p99 during recycles <= 1.2 x steady, %s"
    found = {"targets": {label % "saturated": {"value": 2.2, "met": False},
                         label % "paced": {"value": 1.1, "met": True},
                         "smartspawn failed requests = 0": {"value": 0, "met": True}},
             "summary": {"saturated floor": {"during_ratio": 1.89},
                         "paced floor": {"during_ratio": None}}}
    rows = {label: measured for _, label, measured, _ in report.recycle_targets(found)}
    assert rows[label % "saturated"] == "2.20 (the floor: 1.89)"
    assert rows[label % "paced"] == "1.10"  # no recycle in the floor's window: no ratio
    assert rows["smartspawn failed requests = 0"] == "0.00"


def test_the_recycle_rounds_wait_for_every_server_before_each_window(monkeypatch):
    from bench import recycle_latency
    servers = {key: types.SimpleNamespace(name=" ".join(key)) for key in (
        ("plain", "steady"), ("smartspawn", "steady"), ("plain", "recycling"),
        ("smartspawn", "recycling"))}
    waited, measured = [], []
    monkeypatch.setattr(recycle_latency, "wait_idle",
                        lambda waited_for, timeout: waited.append(list(waited_for)))
    monkeypatch.setattr(recycle_latency, "window", lambda server, *args: measured.append(
        server) or {"recycles": 2, "recycle_seconds": 0.1})
    monkeypatch.setattr(recycle_latency, "floor_window", lambda server, *args: measured.append(
        "floor") or {})
    monkeypatch.setattr(recycle_latency, "report_window", lambda *args: None)
    runs = {(load, *key): [] for load in recycle_latency.LOADS
            for key in [*servers, ("floor", "recycling")]}
    args = argparse.Namespace(rounds=1, timeout=5, rate=100.0, pace=0.5)
    recycle_latency.rounds(servers, runs, args, floor=None)
    assert len(measured) == 10  # 2 loads x (4 windows + the floor's)
    assert waited == [list(servers.values())] * 10


def test_the_oob_report_gives_the_floor_and_checks_p99_9(capsys):
    from bench import oob_latency

    def run(p99, p999):
        return {"rps": 100.0, "p50": 1.0, "p99": p99, "p999": p999, "cpu_us": 2000.0,
                "errors": 0}

    names = ("A plain gunicorn", "B smartspawn oob_gc", oob_latency.FLOOR)
    servers = [types.SimpleNamespace(name=name) for name in names]
    results = {"runs": {"/garbage": dict(zip(names, ([run(10.0, 500.0)], [run(8.0, 10.0)],
                                                      [run(6.0, 5.0)]), strict=True))}}
    args = argparse.Namespace(client="python", workers=4, rounds=1, seconds=10)
    missed = oob_latency.report(servers, results, args)
    assert results["floor"] == {"p99": 0.6, "p999": 0.01}
    assert results["targets"]["/garbage p99.9 B/A <= 0.20"] == {"value": 0.02, "met": True}
    assert missed == ["/garbage p99 B/A <= 0.70"]  # 0.8
    assert "the floor: no collector) 0.600" in capsys.readouterr().out
