"""`smartspawn status` and the control socket, against a real running server."""
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gunicorn
import pytest

import gunicorn_smartspawn
from conftest import GUNICORN, wait_for
from gunicorn_smartspawn.cli import status as status_module
from gunicorn_smartspawn.shared import cgroup, state
from services import library

STATUS = [sys.executable, "-m", "smartspawn", "status"]
ROOT = Path(__file__).resolve().parent.parent


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
        # A request each time: a worker's asks for its turn made while it waits for one
        # come to one collection, so a fixed number of requests may give any worker
        # fewer than 3 (CI, 3.14.4: 12 requests, 2 collections each).
        server.request()
        result = status("--pid", str(server.pid), "--json")
        rows = json.loads(result.stdout)["processes"]
        return [(r["oob_collections"], r["oob_microseconds"]) for r in rows
                if r["role"] == "worker" and r["oob_collections"] >= 3]

    rows = wait_for(oob, timeout=30, what="out-of-band collections in the status")
    assert all(microseconds > 0 for _, microseconds in rows)


# (worker class, extra arguments, app file, a request that lasts about 4 s)
CLASSES = [
    pytest.param(("smartspawn.Worker", (), "long_requests.py", "/stream?4"), id="sync"),
    pytest.param(("smartspawn.Worker", ("--threads", "4"), "long_requests.py", "/stream?4"),
                 id="gthread"),
    pytest.param(("smartspawn.ASGIWorker", (), "fastapi_lifespan.py", "/sleep?s=4"),
                 id="asgi"),
]


@pytest.mark.parametrize("kind", CLASSES)
def test_a_worker_in_a_slow_request_shows_busy_with_one_in_flight(make_server, kind):
    worker_class, args, app_file, slow = kind
    if app_file == "fastapi_lifespan.py":
        library("fastapi")
    server = make_server(app_file, workers=1, worker_class=worker_class, args=args).start()

    def worker_row():
        result = status("--pid", str(server.pid), "--json")
        assert result.returncode == 0, result.stderr
        rows = [r for r in json.loads(result.stdout)["processes"] if r["role"] == "worker"]
        return rows[0] if rows else None

    # The readiness probe's request is over: idle, with a last request.
    row = wait_for(lambda: (lambda r: r if r and r["last_request"] is not None else None)(
        worker_row()), what="the probe's request in the status")
    assert (row["busy"], row["in_flight"]) == (False, 0), row
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow_request = pool.submit(server.request, slow, 20.0)
        row = wait_for(lambda: (lambda r: r if r and r["busy"] else None)(worker_row()),
                       what="the worker busy in the status")
        assert row["in_flight"] == 1, row
        assert 0 <= row["last_heartbeat"] < 31 and row["cpu_seconds"] >= 0, row
        table = status("--pid", str(server.pid)).stdout
        assert re.search(r"^worker +%d +1 +\S+ +busy +1 " % row["pid"], table, re.M), table
        assert slow_request.result()[0] == 200
    row = wait_for(lambda: (lambda r: r if r and not r["busy"] else None)(worker_row()),
                   what="the worker idle again")
    assert row["in_flight"] == 0 and row["last_request"] < 5, row


def test_watch_to_a_pipe_writes_no_terminal_codes_and_json_lines(make_server):
    server = make_server(workers=1).start()
    result = status("--pid", str(server.pid), "--watch", "0.2", "--count", "3")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    headers = re.findall(r"^smartspawn \S+, gunicorn \S+; .* \(the server's state is "
                         r"[\d.]+s old\)$", result.stdout, re.M)
    assert len(headers) == 3, result.stdout
    assert re.search(r"^ROLE .* RSS MiB +PSS MiB +USS MiB +SHARED MiB +CPU %$",
                     result.stdout, re.M), result.stdout

    result = status("--pid", str(server.pid), "--watch", "0.2", "--count", "3", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and "\x1b" not in result.stdout
    reports = [json.loads(line) for line in lines]
    assert all(r["master"] == server.pid for r in reports)
    assert [r["time"] for r in reports] == sorted(r["time"] for r in reports)
    # CPU % is over the interval: from the second report on, for the processes that were
    # in the previous one (the standby is forked after the worker, maybe between reports).
    assert {row["cpu_percent"] for row in reports[0]["processes"]} == {None}
    before = {row["pid"] for row in reports[1]["processes"]}
    third = reports[2]["processes"]
    assert all((row["cpu_percent"] is None) == (row["pid"] not in before) for row in third)
    assert any(row["cpu_percent"] is not None for row in third), third


def test_watch_to_a_pipe_until_killed_gives_whole_json_lines(make_server):
    """Without --count, as `smartspawn status --watch 1 --json | consumer` runs: read a
    few lines, then stop it."""
    server = make_server(workers=1).start()
    proc = subprocess.Popen([*STATUS, "--pid", str(server.pid), "--watch", "0.1", "--json"],
                            stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            assert json.loads(proc.stdout.readline())["master"] == server.pid
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_status_header_and_cgroup_line(make_server):
    server = make_server(workers=1).start()
    result = status("--pid", str(server.pid), "--json")
    report = json.loads(result.stdout)
    assert report["smartspawn_version"] == gunicorn_smartspawn.__version__
    assert report["gunicorn_version"] == gunicorn.__version__
    assert abs(report["time"] - time.time()) < 30
    memory = cgroup.memory_of(server.pid)
    if memory is None:
        assert report["cgroup"] is None
    else:
        assert report["cgroup"]["version"] == memory.version
        assert report["cgroup"]["path"] == memory.path


def test_status_finds_a_server_started_with_another_tmpdir(make_server, tmp_path):
    """The server's state file is in its $TMPDIR; status runs with another one."""
    server_tmp, our_tmp = tmp_path / "server-tmp", tmp_path / "our-tmp"
    server_tmp.mkdir()
    our_tmp.mkdir()
    server = make_server(workers=1, env={"TMPDIR": str(server_tmp)}).start()
    wait_for(lambda: list(server_tmp.glob("smartspawn-*/%d.json" % server.pid)),
             what="the state file in the server's TMPDIR")
    result = subprocess.run([*STATUS, "--pid", str(server.pid), "--json"], capture_output=True,
                            text=True, timeout=30, env={**os.environ, "TMPDIR": str(our_tmp)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["master"] == server.pid
    # Without --pid, each gunicorn process of ours is looked at in its own view.
    assert server.pid in status_module.live_masters()
    assert not list(our_tmp.iterdir())


@pytest.fixture
def outside_tmp():
    """A directory outside /tmp, for a server whose /tmp is a tmpfs of its own."""
    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="smartspawn-test-"))
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a mount namespace needs root and unshare(1)")
def test_status_reads_the_state_of_a_server_with_a_private_tmp(make_server, outside_tmp):
    """As under systemd's PrivateTmp=true: the server runs in a mount namespace of its own
    with a tmpfs on /tmp, where it writes its state file; status, outside, reads it
    through /proc/PID/root."""
    # What the server runs from stays visible if it lives under /tmp (a clone there, its
    # virtualenv): mounted back into the new /tmp, as systemd's BindPaths= would.
    needed = {Path(path).resolve() for path in (
        ROOT, sys.prefix, sys.base_prefix, GUNICORN,
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)))}
    keep = sorted({path.relative_to("/tmp").parts[0] for path in needed
                   if path.is_relative_to("/tmp")})
    hidden = outside_tmp / "host-tmp"
    hidden.mkdir()
    script = ('mount --bind /tmp "$HIDDEN" && mount -t tmpfs tmpfs /tmp && '
              'for name in $KEEP; do mkdir "/tmp/$name" && '
              'mount --bind "$HIDDEN/$name" "/tmp/$name" || exit 1; done && exec "$0" "$@"')
    server = make_server(workers=1, parent=outside_tmp, env={
        "TMPDIR": "/tmp", "HIDDEN": str(hidden), "KEEP": " ".join(keep)}, command=[
        "unshare", "--mount", "--propagation", "private", "sh", "-c", script,
        GUNICORN, "-k", "smartspawn.Worker"]).start()
    assert not os.path.exists(state.state_path(server.pid, "/tmp/smartspawn-%d" % os.getuid()))

    def roles():
        result = status("--pid", str(server.pid), "--json")
        assert result.returncode == 0, result.stderr
        return {row["role"] for row in json.loads(result.stdout)["processes"]} >= {
            "master", "preloader", "worker"}

    wait_for(roles, what="the server's roles in its status (rewritten once a second)")
    assert server.pid in status_module.live_masters()
