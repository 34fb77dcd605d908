"""A server in a memory cgroup the test creates, as in a container: `smartspawn status`
shows the group's usage and limit, and `max_worker_memory = "N%"` is a share of that
limit. Needs root and a cgroup v1 memory hierarchy the test can write to (the group is
made under the test's own memory cgroup and removed at teardown); skipped otherwise.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import GUNICORN, LoadLoop, wait_for
from gunicorn_smartspawn.shared import cgroup
from services import free_port

MIB = 1024 ** 2
STATUS = [sys.executable, "-m", "smartspawn", "status"]
# Joins the memory group named by $0, then becomes gunicorn: its master, and every
# process it forks, is in the group from the start.
JOIN = 'echo $$ > "$0/cgroup.procs" && exec "$@"'


class MemoryGroup:
    def __init__(self, directory, path):
        self.directory, self.path = Path(directory), path  # path: as /proc/PID/cgroup says

    def limit(self, nbytes):
        (self.directory / "memory.limit_in_bytes").write_text(str(nbytes))

    def command(self, worker_class="smartspawn.Worker"):
        """What starts a server in this group (Server's `command`)."""
        return ["sh", "-c", JOIN, str(self.directory), GUNICORN, "-k", worker_class]


@pytest.fixture
def memory_group():
    """A new, empty v1 memory cgroup below the test's own; removed at teardown (after the
    servers: request it before make_server)."""
    if os.geteuid() != 0:
        pytest.skip("creating a memory cgroup needs root")
    own = cgroup.memory_of(os.getpid())
    if own is None or own.version != 1:
        pytest.skip("the test creates a cgroup v1 memory group; this process's memory "
                    "cgroup is %s" % ("v2" if own else "none"))
    parent = cgroup.mounted_at("/proc/self/mountinfo", 1, own.path)
    name = "smartspawn-test-%d-%d" % (os.getpid(), time.monotonic_ns())
    directory = os.path.join(parent, name)
    try:
        os.mkdir(directory)
    except OSError as exc:
        pytest.skip("no writable memory controller: cannot create %s: %s" % (directory, exc))
    yield MemoryGroup(directory, os.path.join(own.path, name))
    # The servers are gone (their teardown ran first); a process that is still there
    # (a zombie being reaped) is moved out, and the group removed.
    deadline = time.monotonic() + 10
    while True:
        try:
            os.rmdir(directory)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
        for pid in Path(directory, "cgroup.procs").read_text().split():
            try:
                Path(parent, "cgroup.procs").write_text(pid)
            except OSError:
                pass  # exited meanwhile
        time.sleep(0.1)


def status(server, *args):
    return subprocess.run([*STATUS, "--pid", str(server.pid), *args], capture_output=True,
                          text=True, timeout=30)


def test_status_and_metrics_show_the_memory_cgroup_of_the_server(memory_group, make_server):
    memory_group.limit(1024 * MIB)
    port = free_port()
    server = make_server(workers=2, command=memory_group.command(),
                         config='metrics_bind = "127.0.0.1:%d"\n' % port).start()
    assert cgroup.memory_of(server.pid).path == memory_group.path
    report = json.loads(status(server, "--json").stdout)
    figures = report["cgroup"]
    assert (figures["version"], figures["path"], figures["limit_bytes"]) == (
        1, memory_group.path, 1024 * MIB), figures
    # The server's own processes, not the test's group: a Python server's heaps, and less
    # than the limit the kernel holds it to.
    assert 10 * MIB < figures["usage_bytes"] < 1024 * MIB, figures
    assert figures["usage_bytes"] >= sum(row["uss"] for row in report["processes"]) / 2
    text = status(server).stdout
    assert re.search(r"^memory cgroup v1 %s: [\d.]+ MiB used of a 1024.0 MiB limit \(\d+%%\)$"
                     % re.escape(memory_group.path), text, re.M), text
    scraped = wait_for(lambda: (lambda text: text if "smartspawn_cgroup" in text else None)(
        urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read()
        .decode()), what="the cgroup figures on /metrics")
    samples = {sample.name: sample.value for family in text_string_to_metric_families(scraped)
               for sample in family.samples}
    assert samples["smartspawn_cgroup_memory_limit_bytes"] == 1024 * MIB
    assert 10 * MIB < samples["smartspawn_cgroup_memory_usage_bytes"] < 1024 * MIB


def test_status_says_when_the_memory_cgroup_has_no_limit(memory_group, make_server):
    if cgroup.memory_of(os.getpid()).limit_bytes is not None:
        pytest.skip("the test's own memory cgroup has a limit, which the new group inherits")
    server = make_server(workers=1, command=memory_group.command()).start()
    figures = json.loads(status(server, "--json").stdout)["cgroup"]
    assert figures["path"] == memory_group.path and figures["limit_bytes"] is None
    assert re.search(r"^memory cgroup v1 %s: [\d.]+ MiB used, no limit$"
                     % re.escape(memory_group.path), status(server).stdout, re.M)


def test_max_worker_memory_share_is_of_the_cgroup_limit_and_enforced(memory_group,
                                                                     make_server):
    """8% of 512 MiB is 41.0 MiB: a leaking worker is replaced there."""
    memory_group.limit(512 * MIB)
    server = make_server("lifecycle.py", workers=2, command=memory_group.command(), config=(
        'max_worker_memory = "8%"\nmemory_sample_interval = 0.2\n')).start()
    server.wait_log(r"\[INFO\] max_worker_memory = 8%% of the memory cgroup's limit "
                    r"\(%s, 512.0 MiB\): 41.0 MiB" % re.escape(memory_group.path))
    first = set(server.worker_pids())
    # 64 KiB a request: at 512 the workers leaked 450 MiB before three samples saw it on a
    # loaded machine, and the cgroup's OOM killer took one in the middle of a request.
    with LoadLoop(server, "/leak?64") as load:
        server.wait_log(r"Replacing worker \(pid: (%s)\): its private memory \(USS\) "
                        r"[\d.]+ MiB stayed above max_worker_memory 41.0 MiB"
                        % "|".join(map(str, first)), timeout=30)
    assert load.failures == []


def test_max_worker_memory_share_follows_the_limit_on_hup(memory_group, make_server):
    memory_group.limit(1024 * MIB)
    server = make_server(workers=1, command=memory_group.command(),
                         config='max_worker_memory = "10%"\n').start()
    server.wait_log(r"max_worker_memory = 10% of the memory cgroup's limit \(\S+, "
                    r"1024.0 MiB\): 102.4 MiB")
    memory_group.limit(2048 * MIB)
    server.signal(signal.SIGHUP)
    server.wait_log(r"max_worker_memory = 10% of the memory cgroup's limit \(\S+, "
                    r"2048.0 MiB\): 204.8 MiB")


def test_max_worker_memory_share_without_a_limit_stops_the_start(memory_group, make_server):
    if cgroup.memory_of(os.getpid()).limit_bytes is not None:
        pytest.skip("the test's own memory cgroup has a limit, which the new group inherits")
    server = make_server(workers=1, command=memory_group.command(),
                         config='max_worker_memory = "10%"\n').start(wait=False)
    assert server.wait_exit() == 1
    assert ("Error: Invalid value for smartspawn setting max_worker_memory='10%%': a share of "
            "the memory cgroup's limit, and this server has none (its memory cgroup %s has "
            "no limit)" % memory_group.path) in server.log(), server.log()
    assert not server.pidfile.exists()
