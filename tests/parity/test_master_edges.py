"""The master at the edges an operator reaches: each case against plain gunicorn's outcome.

- reuse_port and a HUP that changes `bind`, or only `backlog`: the new workers listen
  where the new configuration says, with its backlog;
- a reuse_port seat that cannot be bound (a HUP turns reuse_port on; a HUP moves to a
  port another process holds): that spawn fails and is retried later, the master lives
  and the workers keep serving;
- no fork from the master with the control socket's thread running (CPython 3.12+ warns
  "This process is multi-threaded, use of fork() may lead to deadlocks in the child");
- the master's fds run out (RLIMIT_NOFILE): a spawn fails, the master lives and serves.

Each scenario runs against plain gunicorn (`-k sync`) first, then against smartspawn.
"""
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from conftest import wait_for
from gunicorn_smartspawn.host import patches
from parity.helpers import is_smart

REFORK = "fork_worker = 10**9\n"


@contextlib.contextmanager
def reserved_port():
    """A loopback port nobody else binds meanwhile: a socket bound with SO_REUSEPORT, never
    listening (connections only reach listening sockets), so that reuse_port sockets of
    the same user may bind it too."""
    reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", 0))
    try:
        yield reserve.getsockname()[1]
    finally:
        reserve.close()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bind_from_config(server, config):
    """Take `bind` out of the command line (it would win over the file): the
    configuration file, which a HUP reads again, says it."""
    at = server.cmd.index("--bind")
    del server.cmd[at:at + 2]
    write_config(server, config)


def write_config(server, config):
    (server.root / "gunicorn.conf.py").write_text(config)


def answers(server, port, timeout=2.0):
    """The pid of the worker that answered on `port`, or None."""
    old, server.port = server.port, port
    try:
        status, body = server.request("/", timeout=timeout)
        return status == 200 and int(re.search(rb'"pid": (\d+)', body).group(1))
    except OSError:
        return None
    finally:
        server.port = old


def failures(server, port, count=30):
    """Of `count` requests on new connections to `port`, those that failed or took 2 s."""
    return sum(not answers(server, port) for _ in range(count))


def backlogs(port):
    """The backlog of each socket listening on loopback `port` (`ss`: its Send-Q)."""
    out = subprocess.run(["ss", "-Hltn", "sport = :%d" % port], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    return sorted({int(line.split()[2]) for line in out.splitlines()})


def start_serving(server, port, workers=2):
    server.start(wait=False)
    wait_for(lambda: server.exited() is None and len(server.worker_pids()) == workers
             and answers(server, port), timeout=20, what="serving\n" + server.log())


def new_generation_serves(server, old, port, workers=2):
    """`workers` workers run, none of `old`, and one of them answers on `port`."""
    pids = server.worker_pids()
    return (len(pids) == workers and not set(pids) & old
            and answers(server, port) in pids)


# -- reuse_port and a HUP ------------------------------------------------------------------


def test_reuse_port_hup_to_another_port_serves_there_with_its_backlog(run_both):
    """reuse_port, a HUP that moves `bind` to another port and sets `backlog`: the new
    generation serves the new port, every connection there is served, and each of its
    sockets has the new backlog. Plain gunicorn's master binds a socket of its own on the
    new port, in the workers' reuse_port group, and accepts nothing there: the
    connections the kernel hands it wait until they time out."""
    def scenario(server):
        with reserved_port() as first, reserved_port() as second:
            bind_from_config(server, "bind = ['127.0.0.1:%d']\nreuse_port = True\n" % first)
            start_serving(server, first)
            old = set(server.worker_pids())
            write_config(server, "bind = ['127.0.0.1:%d']\nreuse_port = True\n"
                         "backlog = 37\n" % second)
            server.signal(signal.SIGHUP)
            wait_for(lambda: new_generation_serves(server, old, second), timeout=30,
                     what="the new generation on the new port\n" + server.log())
            return {"failed": failures(server, second), "backlogs": backlogs(second),
                    "old port": failures(server, first, 3), "exit": server.stop()}

    plain, smart = run_both(scenario, config="")
    assert plain["failed"] > 0 and plain["backlogs"] == [37], plain
    assert smart == {"failed": 0, "backlogs": [37], "old port": 3, "exit": 0}


def test_reuse_port_hup_that_changes_only_the_backlog(run_both):
    """reuse_port, a HUP that changes only `backlog`: the workers' sockets get it, as
    plain gunicorn's workers, which bind theirs again, do; every connection is served."""
    def scenario(server):
        with reserved_port() as port:
            bind_from_config(server, "bind = ['127.0.0.1:%d']\nreuse_port = True\n" % port)
            start_serving(server, port)
            old = set(server.worker_pids())
            write_config(server, "bind = ['127.0.0.1:%d']\nreuse_port = True\n"
                         "backlog = 41\n" % port)
            server.signal(signal.SIGHUP)
            wait_for(lambda: new_generation_serves(server, old, port)
                     and backlogs(port) == [41], timeout=30,
                     what="the new generation with the new backlog\n" + server.log())
            return {"failed": failures(server, port), "exit": server.stop()}

    plain, smart = run_both(scenario, config="")
    assert plain == {"failed": 0, "exit": 0}
    assert smart == plain


# -- a seat that cannot be bound --------------------------------------------------------------


def test_a_hup_that_turns_reuse_port_on_keeps_the_master_serving(run_both):
    """A HUP turns reuse_port on while the port is bound without it (by the master, and
    the workers that inherited it): no worker socket can be bound there. smartspawn's
    master lives, says why, retries later, and the running workers keep serving. Plain
    gunicorn's master lives too, but it has stopped its old workers for new ones that
    cannot bind: nobody serves the port any more."""
    def scenario(server):
        port = free_port()
        bind_from_config(server, "bind = ['127.0.0.1:%d']\n" % port)
        start_serving(server, port)
        write_config(server, "bind = ['127.0.0.1:%d']\nreuse_port = True\n" % port)
        server.signal(signal.SIGHUP)
        if is_smart(server):
            server.wait_log(r"Worker \d+ was not spawned: the master could not make its "
                            r"listening sockets \(reuse_port\): \[Errno 98\] Address "
                            r"already in use; the next spawn in 1s", timeout=30)
            server.wait_log(r"the next spawn in 2s", timeout=30)  # it backs off
        else:
            server.wait_log(r"Connection in use", timeout=30)
            # its old workers stop once the new ones are forked
            wait_for(lambda: answers(server, port, timeout=1.0) is None, timeout=30,
                     what="plain gunicorn to stop serving\n" + server.log())
        return {"alive": server.exited() is None,
                "serves": bool(answers(server, port, timeout=3.0)), "exit": server.stop()}

    plain, smart = run_both(scenario, config="")
    assert plain == {"alive": True, "serves": False, "exit": 0}
    assert smart == {"alive": True, "serves": True, "exit": 0}


def test_a_hup_to_a_port_another_process_holds_keeps_the_master_serving(run_both):
    """reuse_port, a HUP that moves `bind` to a port another process listens on without
    SO_REUSEPORT: smartspawn's master lives and its workers keep serving the old port;
    once the port is free, the new generation serves there. Plain gunicorn's master binds
    the new address itself, retries for 5 s, and exits 1, leaving its workers running."""
    def scenario(server):
        with reserved_port() as first, socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            second = squatter.getsockname()[1]
            bind_from_config(server, "bind = ['127.0.0.1:%d']\nreuse_port = True\n" % first)
            start_serving(server, first)
            old = set(server.worker_pids())
            write_config(server, "bind = ['127.0.0.1:%d']\nreuse_port = True\n" % second)
            server.signal(signal.SIGHUP)
            if not is_smart(server):
                code = server.wait_exit(30)
                orphans = server.alive(old, grace=1.0)
                for pid in orphans:
                    os.kill(pid, signal.SIGKILL)
                return {"exit": code, "workers left running": bool(orphans)}
            server.wait_log(r"Worker \d+ was not spawned: .*Address already in use", 30)
            outcome = {"old port serves": bool(answers(server, first))}
            squatter.close()
            wait_for(lambda: new_generation_serves(server, old, second), timeout=30,
                     what="the new generation on the freed port\n" + server.log())
            return {**outcome, "exit": server.stop()}

    plain, smart = run_both(scenario, config="")
    assert plain == {"exit": 1, "workers left running": True}
    assert smart == {"old port serves": True, "exit": 0}


# -- no fork with a thread running --------------------------------------------------------------

# What CPython 3.12+ counts for its warning, on every version: the threads running in the
# master once os.fork() has returned there (after the at-fork handlers ran).
COUNT_THREADS_AT_FORK = """\
import os
import threading

MASTER = os.getpid()
if not hasattr(os.fork, "counting"):
    _fork = os.fork

    def fork():
        pid = _fork()
        if pid and os.getpid() == MASTER:
            with open(os.path.join(os.environ["TEST_DIR"], "forks.txt"), "a") as out:
                out.write("%d\\n" % threading.active_count())
        return pid

    fork.counting = True
    os.fork = fork
"""
WARNING = "is multi-threaded, use of fork() may lead to deadlocks"


@pytest.mark.parametrize("spawning", ["smart", "direct"])
def test_no_fork_in_the_master_while_the_control_thread_runs(run_both, spawning):
    """The master forks (a HUP's new preloader; with spawn_method = "direct", each worker
    on TTIN) with its one thread: the control socket's thread starts again only after
    os.fork() returned, and CPython 3.12+ prints no "multi-threaded" warning
    (PYTHONWARNINGS=always). Plain gunicorn stops that thread for its forks too, but its
    at-fork handler starts it again before os.fork() returns: 3.12+ counts it and warns
    (recorded, not required)."""
    def scenario(server):
        server.start()
        assert server.control("show workers")  # the control thread runs
        forks_before = len(server.lines("forks.txt"))
        if spawning == "direct" or not is_smart(server):
            server.signal(signal.SIGTTIN)
            wait_for(lambda: len(server.worker_pids()) == 3, what="a third worker")
        if is_smart(server):  # a HUP forks a new preloader from the master
            old = set(server.worker_pids())
            server.signal(signal.SIGHUP)
            wait_for(lambda: not set(server.worker_pids()) & old and server.get_ok(),
                     timeout=30, what="the new generation\n" + server.log())
        wait_for(lambda: len(server.lines("forks.txt")) > forks_before, what="a fork")
        counts = set(server.lines("forks.txt")[forks_before:])
        assert server.control("show workers")  # and it serves again
        return {"threads at fork": counts, "warned": WARNING in server.log(),
                "exit": server.stop()}

    config = COUNT_THREADS_AT_FORK + "spawn_method = %r\n" % spawning
    plain, smart = run_both(scenario, config=config, env={"PYTHONWARNINGS": "always"})
    assert plain["threads at fork"] == {"2"}
    # The positive control: 3.13 and later warn there (3.12.1 counts threads otherwise).
    assert plain["warned"] == (sys.version_info >= (3, 13))
    # gunicorn 25.1 cannot stop its thread for a fork (25.2 can): there smartspawn forks
    # with it running, as gunicorn does (patches.control_thread_stopped).
    stopped = hasattr(patches.ctl_server.ControlSocketServer, "_stop_for_fork")
    threads = {"1"} if stopped else plain["threads at fork"]
    assert smart == {"threads at fork": threads, "warned": False, "exit": 0}


# -- out of fds -----------------------------------------------------------------------------------


def limit_fds(pid, spare):
    """Set RLIMIT_NOFILE of process `pid` (the master only) to `spare` above what it has
    open; returns the limit."""
    process = psutil.Process(pid)
    limit = process.num_fds() + spare
    process.rlimit(psutil.RLIMIT_NOFILE, (limit, process.rlimit(psutil.RLIMIT_NOFILE)[1]))
    return limit


@pytest.mark.parametrize("ttins", [5, 12])
def test_a_master_out_of_fds_fails_the_spawn_and_serves(run_both, ttins):
    """The master's RLIMIT_NOFILE leaves 9 fds spare; TTIN `ttins` times. With 5, plain
    gunicorn (one heartbeat fd per worker) runs all 7 workers; with fork_worker smartspawn
    holds two fds per worker (heartbeat, channel): fewer fit, and the spawn that finds
    none fails, is logged, and is retried later; the master lives and serves. With 12 no
    server fits them all: plain gunicorn's master dies of an unhandled OSError (exit 255),
    smartspawn's lives and serves."""
    def scenario(server):
        server.start()
        assert server.control("show workers")  # its thread's fds are open: count them
        limit_fds(server.pid, spare=9)
        for count in range(ttins):
            server.signal(signal.SIGTTIN)
            wait_for(lambda count=count: len(server.worker_pids()) >= 3 + count
                     or "Too many open files" in server.log(), timeout=20,
                     what="worker %d, or a failure\n%s" % (3 + count, server.log()))
            if "Too many open files" in server.log():
                break
        if "Unhandled exception in main loop" in server.log():
            return {"exit": server.wait_exit(), "unhandled": True}
        if is_smart(server):
            server.wait_log(r"Worker \d+ was not spawned: the master could not make .*Too "
                            r"many open files \(the master holds fds per worker", 20)
        wait_for(lambda: len(server.worker_pids()) >= 2 and server.get_ok(),
                 what="serving\n" + server.log())
        workers = len(server.worker_pids())
        return {"alive": server.exited() is None, "all workers": workers == 2 + ttins,
                "exit": server.stop()}

    plain, smart = run_both(scenario, config=REFORK)
    if ttins == 5:
        assert plain == {"alive": True, "all workers": True, "exit": 0}
    else:
        assert plain == {"exit": 255, "unhandled": True}
    assert smart == {"alive": True, "all workers": False, "exit": 0}
