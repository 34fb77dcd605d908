"""`smartspawn status` and the control socket, against a real running server."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import wait_for

STATUS = [sys.executable, "-m", "smartspawn", "status"]


def status(*args):
    return subprocess.run([*STATUS, *args], capture_output=True, text=True, timeout=30)


def settled(read, gap):
    """(value,) once two reads of `read()`, `gap` seconds apart, agree and are not None;
    else None (for wait_for: a count can be 0). The readiness probes may still be counted."""
    first = read()
    time.sleep(gap)
    return (first,) if first is not None and read() == first else None


def test_status_shows_every_role_with_real_memory(make_server):
    server = make_server(workers=2, config="fork_worker = True\n").start()
    for _ in range(10):
        server.request()
    server.signal(signal.SIGURG)
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)
    wait_for(lambda: server.children() and len(server.worker_pids()) == 2, what="2 workers")

    def roles():
        """The report once it has every role and the second generation's workers (the
        state file is rewritten once a second: one from mid-refork has both too)."""
        result = status("--pidfile", str(server.pidfile), "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        rows = report["processes"]
        workers = [row for row in rows if row["role"] == "worker"]
        complete = {"master", "preloader", "template", "standby", "worker"} <= {
            row["role"] for row in rows}
        current = sorted(row["pid"] for row in workers) == server.worker_pids() and all(
            row["generation"] == 2 and row["spawned_from"] == "template" for row in workers)
        return report if complete and current else None

    report = wait_for(roles, what="all roles and generation 2's workers in the status")
    assert report["master"] == server.pid and report["generation"] == 2
    rows = report["processes"]
    for row in rows:
        assert 0 < row["uss"] <= row["pss"] <= row["rss"], row
    for key in ("rss", "pss", "uss"):
        assert report["totals"][key] == sum(row[key] for row in rows)

    table = status("--pid", str(server.pid))
    assert table.returncode == 0
    assert "template" in table.stdout and "total (" in table.stdout


def test_status_counts_requests(make_server):
    server = make_server(workers=1).start()

    def requests():
        result = status("--pid", str(server.pid), "--json")
        rows = json.loads(result.stdout)["processes"]
        return [row["requests"] for row in rows if row["role"] == "worker"]

    # 1.1 s: the state file is rewritten once a second.
    (counts,) = wait_for(lambda: settled(lambda: requests() or None, 1.1),
                         what="a worker in the status")
    before = counts[0]
    for _ in range(7):
        server.request()
    wait_for(lambda: requests() == [before + 7], what="7 more requests in the status")


def test_status_of_a_process_that_is_not_a_server_fails_clearly():
    result = status("--pid", str(os.getpid()))
    assert result.returncode == 1
    assert "no state file at" in result.stderr and "not a smartspawn master" in result.stderr
    result = status("--pidfile", "/nonexistent/gunicorn.pid")
    assert result.returncode == 1 and "cannot read a pid from" in result.stderr


def test_status_of_a_number_that_is_no_pid_fails_clearly_while_a_server_runs(make_server,
                                                                             tmp_path):
    """--pid 0, a negative pid, or a pidfile holding a number past the kernel's pid_max:
    exit 1 with one line naming the number, never the running server's report nor a
    traceback."""
    server = make_server(workers=1).start()
    assert status("--pid", str(server.pid)).returncode == 0  # the server can be reported
    pidfile = tmp_path / "huge.pid"
    pidfile.write_text("%d\n" % 10 ** 30)
    for args, what in [(("--pid", "0"), "--pid: 0 is not a process id"),
                       (("--pid", "-1"), "--pid: -1 is not a process id"),
                       (("--pidfile", str(pidfile)),
                        "the pid in %s: %d is not a process id" % (pidfile, 10 ** 30))]:
        result = status(*args, "--json")
        assert result.returncode == 1, (args, result)
        assert result.stdout == "" and what in result.stderr, (args, result)
        assert "Traceback" not in result.stderr, (args, result)


def test_process_titles_name_each_role(make_server):
    server = make_server(workers=1).start()
    titles = [title for _, title in server.children()]
    assert any(t.startswith("gunicorn: smartspawn preloader [app:app] gen=1") for t in titles)
    assert any(t.startswith("gunicorn: worker [app:app] gen=1") for t in titles)


def test_control_socket_shows_smartspawn_fields_and_reforks(make_server):
    ControlClient = pytest.importorskip(
        "gunicorn.ctl.client", reason="gunicorn < 25.1: no control socket").ControlClient
    server = make_server(workers=2, config="fork_worker = True\n").start()
    with ControlClient(str(server.root / "gunicorn.ctl")) as client:
        def served():
            return sum(w["requests"] for w in client.send_command("show", ["workers"])["workers"])
        (before,) = wait_for(lambda: settled(served, 0.2), what="a settled request count")
        for _ in range(4):
            server.request()
        # A worker counts a request once its response is sent: the count may trail.
        wait_for(lambda: served() == before + 4, what="4 more requests counted")
        workers = client.send_command("show", ["workers"])["workers"]
        assert {w["spawned_from"] for w in workers} == {"preloader"}
        stats = client.send_command("show", ["stats"])
        assert stats["generation"] == 1 and stats["preloader_pid"] == server.preloader_pid()
        assert "refork" in client.send_command("help")["commands"]
        assert client.send_command("refork") == {"status": "refork requested"}
    server.wait_log(r"refork to generation 2 \(URG\) done", timeout=20)


def test_status_shows_out_of_band_collections(make_server):
    server = make_server(workers=2, config="oob_gc = 1\n").start()

    def oob():
        result = status("--pid", str(server.pid), "--json")
        rows = json.loads(result.stdout)["processes"]
        return [(r["oob_collections"], r["oob_microseconds"]) for r in rows
                if r["role"] == "worker" and r["oob_collections"] >= 3]

    for _ in range(12):
        server.request()
    rows = wait_for(oob, what="out-of-band collections in the status")
    assert all(microseconds > 0 for _, microseconds in rows)
