"""Where a worker is stuck (worker/deadline.py, master/watchdog.py): soft_timeout and
on_soft_timeout, the stacks before WORKER TIMEOUT's kill, extend_deadline, and the
control socket's `worker dump PID`. The stuck request is in stuck_in_the_export()
(tests/apps/stuck.py, stuck_asgi.py): the stacks must name it.
"""
import concurrent.futures
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for
from gunicorn_smartspawn.host.patches import CONTROL_SOCKET

GUNICORNC = str(Path(sys.executable).with_name("gunicornc"))
STACK = r'File ".*app\.py", line \d+ in stuck_in_the_export'
SOFT_TIMEOUT = r"Worker \(pid: %d\) soft timeout: a request has run [\d.]+ s \(soft_timeout 1 s\)"
HOOK = '''
import os

soft_timeout = 1

def on_soft_timeout(worker):
    with open(os.path.join(os.environ["TEST_DIR"], "soft_timeouts"), "a") as f:
        f.write("%d\\n" % os.getpid())
'''
CLASSES = [
    pytest.param(("smartspawn.Worker", (), "stuck.py"), id="sync"),
    pytest.param(("smartspawn.Worker", ("--threads", "4"), "stuck.py"), id="gthread"),
    pytest.param(("smartspawn.ASGIWorker", (), "stuck_asgi.py"), id="asgi"),
]


def in_background(server, path):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(server.request, path, 30.0)
    pool.shutdown(wait=False)
    return future


@pytest.mark.parametrize("kind", CLASSES)
def test_a_request_past_soft_timeout_is_reported_with_its_stacks_and_keeps_running(
        make_server, kind):
    worker_class, args, app_file = kind
    server = make_server(app_file, workers=1, worker_class=worker_class, args=args,
                         config=HOOK).start()
    (worker,) = server.worker_pids()
    answer = in_background(server, "/stuck?3")
    warning = server.wait_log(SOFT_TIMEOUT % worker)
    wait_for(lambda: server.lines("soft_timeouts") == [str(worker)],
             what="on_soft_timeout in the worker\n" + server.log())
    assert answer.result()[0] == 200  # the request went on to its end
    log = server.log()
    assert re.search(STACK, log[warning.end():]), log
    assert log.count("soft timeout:") == 1, log  # once per request
    assert server.lines("soft_timeouts") == [str(worker)]
    if CONTROL_SOCKET:
        (row,) = server.control("show workers")["workers"]
        assert row["soft_timeouts"] == 1, row


def test_after_usr1_reopens_the_error_log_the_stacks_go_to_the_new_one(make_server):
    server = make_server("stuck.py", workers=1, config=HOOK + (
        'errorlog = os.path.join(os.environ["TEST_DIR"], "error.log")\n'))
    server.log_path = server.root / "error.log"  # stdout too, until the rotation
    server.start()
    (worker,) = server.worker_pids()
    server.log_path.rename(server.root / "error.log.1")  # as logrotate does
    server.signal(signal.SIGUSR1)
    wait_for(lambda: str(server.log_path) in writes_to(worker),
             what="the worker writing to the new error log")
    answer = in_background(server, "/stuck?3")
    wait_for(lambda: server.lines("soft_timeouts"), what="on_soft_timeout in the worker")
    assert answer.result()[0] == 200
    assert re.search(SOFT_TIMEOUT % worker + r".*\n(.*\n)*.*" + STACK, server.log()), (
        server.log())


def writes_to(pid):
    fds = "/proc/%d/fd" % pid
    return {os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds)}


def test_worker_timeout_logs_the_stacks_before_the_kill_where_gunicorn_logs_none(
        make_server):
    for worker_class in ("smartspawn.Worker", "sync"):
        server = make_server("stuck.py", workers=1, worker_class=worker_class,
                             args=("--timeout", "2")).start()
        (worker,) = server.worker_pids()
        answer = in_background(server, "/stuck?10")
        timeout = server.wait_log(r"WORKER TIMEOUT \(pid:%d\)" % worker, timeout=15)
        server.wait_log(r"Worker exiting \(pid: %d\)" % worker)
        concurrent.futures.wait([answer], 15)  # a 500, or the connection closed
        after = server.log()[timeout.end():]
        exiting = after.index("Worker exiting (pid: %d)" % worker)
        stack = re.search(STACK, after)
        if worker_class == "sync":
            assert stack is None, after
        else:
            assert stack and stack.start() < exiting, after
        server.teardown()


@pytest.mark.parametrize("soft_timeout, path", [(1, "/extend"), (0, "/extend"),
                                                (0, "/extend-async")])
def test_extend_deadline_pushes_both_limits_of_its_request(make_server, soft_timeout, path):
    """With soft_timeout off the sync worker tracks no request until extend_deadline,
    also called from a context copied from the request's (asyncio.to_thread, asgiref)."""
    server = make_server("stuck.py", workers=1, args=("--timeout", "2"),
                         config="soft_timeout = %d\nmax_deadline_extension = 6\n"
                         % soft_timeout).start()
    (worker,) = server.worker_pids()
    status, body = server.request(path + "?6&4", timeout=15)
    assert status == 200, body
    assert 5.9 < float(re.search(rb'"granted": ([\d.]+)', body).group(1)) <= 6, body
    log = server.log()
    assert "soft timeout" not in log and "WORKER TIMEOUT" not in log, log
    # Beyond max_deadline_extension: cut to it, with one warning naming the setting.
    status, body = server.request("/extend?100&0", timeout=15)
    assert status == 200, body
    assert 5.9 < float(re.search(rb'"granted": ([\d.]+)', body).group(1)) <= 6, body
    server.wait_log(r"extend_deadline\(100\) is cut to 6 s \(max_deadline_extension\)")
    assert server.worker_pids() == [worker]


@pytest.mark.skipif(not CONTROL_SOCKET, reason="gunicorn < 25.1: no control socket")
def test_worker_dump_through_the_control_socket(make_server):
    server = make_server("stuck.py", workers=1).start()
    (worker,) = server.worker_pids()
    answer = in_background(server, "/stuck?3")
    wait_for(lambda: server.lines("stuck"), what="the request in stuck_in_the_export")
    done = dump(server, worker)
    assert done.returncode == 0 and '"dump requested"' in done.stdout, done
    server.wait_log(STACK)
    log = server.log()
    line = re.search(r"Worker \(pid: %d\): writing its stacks to the error log" % worker, log)
    assert line and re.search(STACK, log[line.end():]), log
    assert answer.result()[0] == 200

    unknown = dump(server, server.pid)  # the master is no worker
    assert unknown.returncode == 1, unknown
    assert "%d is not the pid of a worker of this server" % server.pid in unknown.stderr
    assert "Traceback" not in unknown.stderr + unknown.stdout


def dump(server, pid):
    return subprocess.run([GUNICORNC, "-s", str(server.root / "gunicorn.ctl"), "-c",
                           "worker dump %d" % pid], capture_output=True, text=True,
                          timeout=10)
