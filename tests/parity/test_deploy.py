"""Parity of deployment setups: the same outcome under plain gunicorn and smartspawn.

1. `--reuse-port` with a refork under load: zero failed requests, serves after.
2. dirty workers (`dirty_apps`) with a HUP, the dirty arbiter first or respawned: the old
   preloader and standby exit, nothing survives TERM, no error logged.
3. `--reload` with `fork_worker`: an edited app is served after a URG.
4. a unix socket: serves across HUP and URG; TERM removes the socket path.
5. systemd socket activation (LISTEN_FDS): serves across a HUP; TERM exits 0.
6. `--daemon`: serves across a HUP; TERM of the pidfile's pid leaves nothing behind.
7. 96 workers on a ~540 MB heap, at start and on HUP: no spawner declared stuck.

A refork is `kill -URG <master>` with `fork_worker = 10**9`; plain gunicorn ignores SIGURG.
"""
import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psutil
import pytest

from conftest import GUNICORN, LoadLoop, wait_for
from parity.helpers import is_smart

URG_ONLY = "fork_worker = 10**9\n"


def set_arg(server, flag, value):
    """Replace the value of `flag` in the server's command line."""
    server.cmd[server.cmd.index(flag) + 1] = value


def add_args(server, *args):
    """Insert `args` before the app argument (the last one)."""
    server.cmd[-1:-1] = list(args)


def refork(server, done=r"refork to generation \d+ \(URG\) done in"):
    """URG to the master. Under smartspawn, wait for the refork to complete (`done` in the
    log); plain gunicorn ignores URG: give it the same few seconds."""
    start = time.monotonic()
    server.signal(signal.SIGURG)
    if is_smart(server):
        server.wait_log(done, timeout=15)
    else:
        wait_for(lambda: time.monotonic() - start > 3, what="3 seconds")


def hup_and_wait_new_generation(server, count, serves, timeout=20):
    """HUP; wait until `count` workers run, none of them from before, and `serves()`."""
    old = set(server.worker_pids())
    server.signal(signal.SIGHUP)
    wait_for(lambda: not old & set(server.worker_pids())
             and len(server.worker_pids()) == count and serves(), timeout,
             what="a new generation of %d workers\n%s" % (count, server.log()))


def describe(pid):
    """A process's state, for a failure's message: running, a zombie not reaped, or gone."""
    try:
        proc = psutil.Process(pid)
        with open("/proc/%d/wchan" % pid) as wchan:
            return "pid %d: %s, parent %s, waiting in %s" % (pid, proc.status(), proc.ppid(),
                                                             wchan.read() or "-")
    except (psutil.NoSuchProcess, OSError):
        return "pid %d: gone" % pid


def respawned_arbiter_serves(log, killed):
    """A dirty arbiter other than `killed` was spawned, and one of its workers listens.
    Each process logs for itself: the master's "Spawned dirty arbiter" line, written after
    its fork returns, may come after the new arbiter's workers' lines."""
    for arbiter in re.findall(r"Spawned dirty arbiter \(pid: (\d+)\)", log):
        if int(arbiter) == killed:
            continue
        for worker in re.findall(r"\[%s\] \[INFO\] Spawned dirty worker \(pid: (\d+)\)"
                                 % arbiter, log):
            if re.search(r"Dirty worker %s listening" % worker, log):
                return True
    return False


def tree(pid):
    """The pids of `pid` and all its descendants."""
    try:
        proc = psutil.Process(pid)
        return {pid} | {kid.pid for kid in proc.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


# -- 1. reuse_port ----------------------------------------------------------------------


@contextlib.contextmanager
def on_reserved_port(server, workers):
    """Start `server` with --reuse-port on a fixed port and wait until `workers` serve.

    With reuse_port gunicorn 27's master binds nothing: each worker binds its own socket,
    so the port must be fixed. It is reserved by a socket bound with SO_REUSEPORT, never
    listening (connections only reach listening sockets), closed on exit.
    """
    reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", 0))
    server.port = reserve.getsockname()[1]
    set_arg(server, "--bind", "127.0.0.1:%d" % server.port)
    try:
        server.start(wait=False)
        wait_for(lambda: server.exited() is None and len(server.worker_pids()) == workers
                 and server.get_ok(), timeout=20, what="serving\n" + server.log())
        yield server
    finally:
        reserve.close()


def failed_requests(server, count):
    """Of `count` requests, each on a new connection, those that failed or took over 2 s."""
    failed = 0
    for _ in range(count):
        try:
            failed += server.request("/", timeout=2.0)[0] != 200
        except OSError:
            failed += 1
    return failed


def test_reuse_port_refork_under_load(run_both):
    """`--reuse-port`, 2 workers, a refork (URG) under load: zero failed requests, and the
    server serves after. With reuse_port the master's own listener list is empty: each
    worker listens on sockets of its own, which the master binds and passes with the spawn
    request, so a worker forked from the template must listen on exactly those. (Connections
    queued on the socket of a worker that stops serving would be reset if its replacement
    did not take that socket over.)"""
    def scenario(server):
        with on_reserved_port(server, 2), LoadLoop(server, max_seconds=30) as load:
            refork(server)
            before = load.ok
            wait_for(lambda: load.ok > before + 20, what="traffic after the refork")
        return {"failed": load.failures, "serves": server.get_ok(), "exit": server.stop()}

    plain, smart = run_both(scenario, config=URG_ONLY, args=("--reuse-port",))
    assert plain == {"failed": [], "serves": True, "exit": 0}
    assert smart == plain


def test_reuse_port_ttou_leaves_no_socket_nobody_accepts_on(run_both):
    """`--reuse-port`, 4 workers, TTOU twice: every later connection is served. (The
    master keeps each worker's sockets to hand them on: a socket of a worker stopped for
    good must be closed, or the kernel goes on queueing connections on it.)"""
    def scenario(server):
        with on_reserved_port(server, 4):
            for count in (3, 2):
                server.signal(signal.SIGTTOU)
                wait_for(lambda count=count: len(server.worker_pids()) == count,
                         what="%d workers" % count)
            time.sleep(0.5)  # let the master close what it closes: then count the failures
            failed = failed_requests(server, 40)
        return {"failed": failed, "exit": server.stop()}

    plain, smart = run_both(scenario, workers=4, args=("--reuse-port",))
    assert plain == {"failed": 0, "exit": 0}
    assert smart == plain


def test_reuse_port_a_worker_that_cannot_be_replaced_yet_leaves_no_socket(run_both):
    """`--reuse-port`: a worker dies while no replacement can serve for seconds (the code
    on disk now imports slowly, and under smartspawn the preloader is gone too): under
    smartspawn every connection meanwhile is served by the other worker, none waits on the
    dead one's socket. Plain gunicorn does worse here, and that is recorded, not required:
    its replacement binds its own socket before it imports the app, and the connections
    the kernel hands that socket wait for the import."""
    def scenario(server):
        with on_reserved_port(server, 2):
            app_py = server.root / "app.py"
            app_py.write_text("import time\ntime.sleep(6)\n" + app_py.read_text())
            if is_smart(server):
                os.kill(server.preloader_pid(), signal.SIGKILL)
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: victim not in server.worker_pids(), what="the worker gone")
            time.sleep(0.5)  # the master's next turn: then count the failures
            failed = failed_requests(server, 20)
        return {"failed": failed, "exit": server.stop()}

    plain, smart = run_both(scenario, args=("--reuse-port",))
    assert plain["exit"] == 0
    assert smart == {"failed": 0, "exit": 0}


# -- 2. dirty workers ---------------------------------------------------------------------


def remove_dirty_leftovers(server):
    """gunicorn leaves its dirty arbiters' socket directories in /tmp (a SIGKILLed one, or
    after a TERM): remove those this server's log names, and its dirty pidfile."""
    log = server.log()
    for directory in set(re.findall(r"Spawned dirty arbiter \(pid: \d+\) at "
                                    r"(/tmp/gunicorn-dirty-[\w-]+)/arbiter\.sock", log)):
        shutil.rmtree(directory, ignore_errors=True)
    for name in set(re.findall(r"proc_name: (parity-dirty-\w+)", log)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(tempfile.gettempdir(), "gunicorn-dirty-%s.pid" % name))


@pytest.mark.parametrize("respawned", [False, True], ids=["first-arbiter", "respawned-arbiter"])
def test_dirty_workers_with_a_hup(run_both, respawned):
    """gunicorn's dirty workers (`dirty_apps`, `dirty_workers`), then a HUP: the new
    generation serves (through the dirty pool); within a few seconds only one preloader and
    at most one standby remain; TERM exits 0, no process of the tree survives, no error
    logged. `respawned-arbiter`: the dirty arbiter is SIGKILLed first and gunicorn respawns it.
    gunicorn forks the respawned dirty arbiter from the master, so that child too must close
    the master's ends of the spawners' channels: a kept copy hides the EOF on which the old
    preloader and standby exit."""
    def dirty_pid(server):
        """The dirty worker that answered GET /, or None."""
        try:
            status, body = server.request("/", timeout=5.0)
            return json.loads(body)["dirty_pid"] if status == 200 else None
        except (OSError, ValueError):
            return None

    def extra_spawners(server):
        titles = [title for _, title in server.children()]
        preloaders = sum("smartspawn preloader" in t for t in titles)
        standbys = sum("smartspawn standby" in t for t in titles)
        return max(0, preloaders - 1) + max(0, standbys - 1)

    servers = []

    def scenario(server):
        servers.append(server)
        server.start()
        served_at_start = dirty_pid(server) is not None
        # The whole tree (the dirty workers are grandchildren): checked, and killed by
        # teardown if this scenario fails half-way.
        pids = tree(server.pid)
        server.seen_pids |= pids
        if respawned:
            arbiter = int(re.findall(r"Spawned dirty arbiter \(pid: (\d+)\)", server.log())[-1])
            # Its dirty workers outlive a SIGKILL of it, on plain gunicorn too: kill them.
            orphans = tree(arbiter)
            for pid in sorted(orphans):
                os.kill(pid, signal.SIGKILL)
            pids -= orphans
            server.seen_pids -= orphans
            # The workers running keep the dead arbiter's socket path: the next generation
            # (after the HUP) is the first to use the respawned one, on both servers.
            try:
                wait_for(lambda: respawned_arbiter_serves(server.log(), arbiter), timeout=30,
                         what=lambda: "a respawned dirty arbiter's worker\n" + server.log())
            except AssertionError as exc:
                raise AssertionError("%s\n%s" % (describe(arbiter), describe(server.pid))) \
                    from exc
        hup_and_wait_new_generation(server, 2, lambda: dirty_pid(server))
        # The HUP reloads the dirty pool too: let it finish (plain gunicorn 27 loses a TERM
        # that arrives while its dirty arbiter is still replacing its workers). The worker
        # its reload stops can still be running 10 s later, on either server, on CPython
        # 3.13 only (seen in CI; likely asyncio's Server.wait_closed(), which there waits
        # for the connection the dirty arbiter keeps open): TERM then stops it.
        server.wait_log(r"Reloading dirty workers[\s\S]*Spawned dirty worker")
        try:
            server.wait_log(r"Reloading dirty workers[\s\S]*Dirty worker exited")
        except AssertionError:
            assert sys.version_info[:2] == (3, 13), server.log()
        server.seen_pids |= tree(server.pid)
        try:
            wait_for(lambda: extra_spawners(server) == 0, timeout=5)
        except AssertionError:
            pass
        extra = extra_spawners(server)
        # gunicorn's dirty arbiter may still route a request or two to the dirty worker
        # its reload stopped (a timeout, on both servers): ask a few times.
        try:
            serves = bool(wait_for(lambda: dirty_pid(server), timeout=8))
        except AssertionError:
            serves = False
        pids |= tree(server.pid)
        server.seen_pids |= pids
        code = server.stop()
        # Errors the server logged (e.g. a standby that failed), but not failed requests:
        # those come from the dirty reload above, on both servers.
        log = server.log()
        errors = [line for line in log.splitlines()
                  if "[ERROR]" in line and "Error handling request" not in line]
        if sys.version_info[:2] == (3, 13) and "RuntimeError: Event loop is closed" in log:
            # gunicorn 27's dirty arbiter on 3.13, either server: the SIGCHLD of the worker
            # its stop() SIGKILLed (the one above, still running) lands after its event
            # loop closed, and it exits 255 as it stops. Not smartspawn's; anything else is.
            errors = [line for line in errors if "Exception in dirty arbiter process" not in line
                      and not re.search(r"Dirty arbiter \(pid:\d+\) exited with code 255", line)]
        return {"served_at_start": served_at_start, "extra_spawners": extra,
                "serves": serves, "exit": code, "survivors": server.alive(pids), "errors": errors}

    # A unique proc_name: gunicorn keeps the dirty arbiter's pidfile at
    # /tmp/gunicorn-dirty-<proc_name>.pid and kills the process an older one names.
    # dirty_graceful_timeout 5 s (default 30): on CPython 3.13, plain gunicorn 27's dirty
    # worker that served a request before the HUP exits only when that timeout ends, so a
    # TERM takes 30 s on both servers (on 3.11 and 3.14: under a second).
    config = ("dirty_apps = ['app:Pid']\ndirty_workers = 1\nproc_name = 'parity-dirty-%s'\n"
              "dirty_graceful_timeout = 5\n" % uuid.uuid4().hex[:8])
    try:
        plain, smart = run_both(scenario, app_file="parity_deploy_dirty.py", config=config)
    finally:
        for server in servers:
            remove_dirty_leftovers(server)
    assert plain == {"served_at_start": True, "extra_spawners": 0, "serves": True,
                     "exit": 0, "survivors": [], "errors": []}
    assert smart == plain


# -- 3. --reload --------------------------------------------------------------------------


def test_reload_with_fork_worker_serves_edited_code(run_both):
    """`--reload` with `fork_worker`: after a URG, edit the app (VERSION v1 -> v2); the
    served version changes within a few seconds. smartspawn falls back to direct spawning
    with --reload: a worker forked from the template runs the code the template loaded, so
    an edited file would never take effect."""
    def versions(server):
        """The versions the current workers serve. Each reloader polls on its own: 8
        requests to one worker that had reloaded once passed for all (CI, 3.13.5)."""
        workers, served = set(server.worker_pids()), {}
        for _ in range(100):
            body = server.get_json()
            served[body["pid"]] = body["version"]
            if workers <= set(served):
                break
        return set(served.values())

    def scenario(server):
        server.start()
        # smartspawn may also turn fork_worker off under --reload (and say so).
        refork(server, done=r"\(URG\) done in|URG ignored")
        app_py = server.root / "app.py"
        app_py.write_text(app_py.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
        try:
            wait_for(lambda: versions(server) == {"v2"}, timeout=10, interval=0.2)
        except AssertionError:
            pass
        return {"versions": sorted(versions(server)), "exit": server.stop()}

    plain, smart = run_both(scenario, config=URG_ONLY, args=("--reload",))
    assert plain == {"versions": ["v2"], "exit": 0}
    assert smart == plain


# -- 4. unix socket -------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def unix_get(path, timeout=5.0):
    """(status, JSON body) of GET / over the unix socket at `path`."""
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def unix_ok(path):
    try:
        return unix_get(path)[0] == 200
    except (OSError, ValueError):
        return False


def test_unix_socket_serves_across_hup_and_urg(run_both):
    """`--bind unix:<path>`: serves, then a HUP, then a URG (a refork under smartspawn),
    and serves after each; TERM exits 0 and removes the socket path."""
    sock_dir = tempfile.mkdtemp(prefix="pd-", dir="/tmp")  # short: sun_path is 108 bytes

    def scenario(server):
        path = os.path.join(sock_dir, server.root.name + ".sock")
        set_arg(server, "--bind", "unix:" + path)
        server.start(wait=False)
        wait_for(lambda: server.exited() is None and len(server.worker_pids()) == 2
                 and unix_ok(path), timeout=20, what="serving on %s\n%s" % (path, server.log()))
        served = [unix_ok(path)]
        hup_and_wait_new_generation(server, 2, lambda: unix_ok(path))
        served.append(unix_ok(path))
        refork(server)
        served.append(unix_ok(path))
        code = server.stop()
        return {"served": served, "exit": code, "socket_left": os.path.exists(path)}

    try:
        plain, smart = run_both(scenario, config=URG_ONLY)
    finally:
        for name in os.listdir(sock_dir):
            os.unlink(os.path.join(sock_dir, name))
        os.rmdir(sock_dir)
    assert plain == {"served": [True, True, True], "exit": 0, "socket_left": False}
    assert smart == plain


# -- 5. systemd socket activation ----------------------------------------------------------

# Puts the inherited socket at fd 3 and sets LISTEN_FDS / LISTEN_PID for the process that
# execs gunicorn (the same pid), as systemd does.
SYSTEMD_EXEC = ("import os, sys; fd = int(sys.argv[1])\n"
                "if fd != 3: os.dup2(fd, 3); os.close(fd)\n"
                "os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_PID'] = str(os.getpid())\n"
                "os.execv(sys.argv[2], sys.argv[2:])")


def test_systemd_socket_activation_serves_across_a_hup(run_both):
    """Socket activation: the test binds the listening socket and gunicorn gets it as fd 3
    with LISTEN_FDS=1 and LISTEN_PID=<its pid>. Serves, HUP, serves, TERM exits 0."""
    def scenario(server):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        fd = listener.fileno()
        server.cmd = [sys.executable, "-c", SYSTEMD_EXEC, str(fd)] + server.cmd
        assert server.cmd[4] == GUNICORN
        # Server.start() with the socket passed on (it cannot take pass_fds).
        server.log_file = open(server.log_path, "ab")
        try:
            server.proc = subprocess.Popen(
                server.cmd, stdout=server.log_file, stderr=subprocess.STDOUT, env=server.env,
                cwd=server.root, start_new_session=True, pass_fds=(fd,))
        finally:
            port = listener.getsockname()[1]
            listener.close()
        server.port = port
        wait_for(lambda: server.exited() is None and len(server.worker_pids()) == 2
                 and server.get_ok(), timeout=20, what="serving\n" + server.log())
        served = [server.get_ok()]
        hup_and_wait_new_generation(server, 2, server.get_ok)
        served.append(server.get_ok())
        return {"served": served, "exit": server.stop()}

    plain, smart = run_both(scenario)
    assert plain == {"served": [True, True], "exit": 0}
    assert smart == plain


# -- 6. --daemon ------------------------------------------------------------------------------


def test_daemon_serves_across_a_hup_and_stops(run_both):
    """`--daemon`: the command exits at once and the master runs detached; with the pid from
    the pidfile: serves, HUP, serves, TERM; no process of the tree survives."""
    def scenario(server):
        errorlog = server.root / "error.log"
        add_args(server, "--daemon", "--error-logfile", str(errorlog))
        server.start(wait=False)
        launcher = server.wait_exit(10)
        master = int(wait_for(lambda: server.pidfile.exists() and server.pidfile.read_text()
                              .strip(), what="the pidfile"))
        seen = set()
        try:
            port = wait_for(lambda: re.search(
                r"Listening at: http://127\.0\.0\.1:(\d+)",
                errorlog.read_text() if errorlog.exists() else ""), what="the daemon listening")
            server.port = int(port.group(1))

            def workers():
                seen.update(tree(master))
                out = []
                for kid in psutil.Process(master).children():
                    try:
                        if "worker [" in " ".join(kid.cmdline()):
                            out.append(kid.pid)
                    except psutil.Error:  # gone, or a zombie not reaped yet
                        pass
                return sorted(out)

            wait_for(lambda: len(workers()) == 2 and server.get_ok(), timeout=20,
                     what="2 workers serving\n" + errorlog.read_text())
            served = [server.get_ok()]
            old = set(workers())
            os.kill(master, signal.SIGHUP)
            wait_for(lambda: not old & set(workers()) and len(workers()) == 2
                     and server.get_ok(), timeout=20,
                     what="a new generation\n" + errorlog.read_text())
            served.append(server.get_ok())
            seen.update(tree(master))
            os.kill(master, signal.SIGTERM)
            return {"launcher_exit": launcher, "served": served,
                    "survivors": server.alive(seen, grace=15)}
        finally:
            for pid in server.alive(seen | {master}, grace=0):
                os.kill(pid, signal.SIGKILL)

    plain, smart = run_both(scenario)
    assert plain == {"launcher_exit": 0, "served": [True, True], "survivors": []}
    assert smart == plain


# -- 7. many workers on a big heap -----------------------------------------------------------

# Items of the big-heap app: 3,000,000 make ~540 MB, built in ~2.8 s here.
BIGHEAP_ITEMS = 3_000_000
# Why 96 workers: a smart spawn of that heap takes ~70-100 ms here, so 32 queued
# spawns take ~3 s and never reach the 5 s deadline; 64 take 4.4-5 s (only sometimes);
# 96 take ~7 s: reliably past it.
BIGHEAP_WORKERS = 96


def test_many_workers_on_a_big_heap_at_start_and_on_hup(run_both):
    """96 workers of an app that builds ~540 MB of small objects at import (~3 s here), at
    start and after a HUP: every worker serves, smartspawn logs no "killing it"/"stuck"
    line, TERM exits 0. Plain gunicorn runs with `--preload` (96 workers each importing
    540 MB would need 52 GB). The preloader forks one worker at a time, so the 5 s spawn
    deadline must bound one spawn, not the wait behind the others queued: a healthy
    preloader with many spawns queued is not stuck. (96 so that the queue outlasts the
    deadline on this machine: see BIGHEAP_WORKERS.)"""
    n = BIGHEAP_WORKERS

    def distinct_servers(server):
        """How many workers answer `n` concurrent one-second requests."""
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(server.get_json, "/sleep?1", 20.0) for _ in range(n)]
            return len({f.result()["pid"] for f in futures})

    def all_serve(server):
        try:
            return distinct_servers(server) == n
        except (OSError, AssertionError):
            return False

    def scenario(server):
        if not is_smart(server):
            add_args(server, "--preload")
        server.start(wait=False)
        server.wait_ready(timeout=40)
        # Each wait fails the test unless all n workers answered one sample at once (a
        # second sample could miss one: a worker done with its /sleep takes another).
        wait_for(lambda: all_serve(server), timeout=30, interval=0.5,
                 what="%d workers serving\n%s" % (n, server.log()))
        hup_and_wait_new_generation(server, n, lambda: True, timeout=40)
        wait_for(lambda: all_serve(server), timeout=30, interval=0.5,
                 what="the new %d workers serving\n%s" % (n, server.log()))
        log = server.log()
        code = server.stop(timeout=30)
        return {"exit": code,
                "stuck": [line for line in log.splitlines()
                          if "killing it" in line or "stuck" in line]}

    plain, smart = run_both(scenario, app_file="parity_deploy_bigheap.py", workers=n,
                            env={"BIGHEAP_ITEMS": str(BIGHEAP_ITEMS)})
    assert plain == {"exit": 0, "stuck": []}
    assert smart == plain
